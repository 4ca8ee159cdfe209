"""The guides in docs/guides run as written, against the test server."""

from __future__ import annotations

import pathlib
import re

import pytest

GUIDES = sorted(
    guide
    for guide in (pathlib.Path(__file__).resolve().parent.parent / "docs" / "guides").glob("*.md")
    if "```python\n" in guide.read_text()  # runnable; ```py blocks need other machines
)


def test_the_analysis_guides_are_runnable():
    assert {g.stem for g in GUIDES} >= {"sensitivity-analysis", "parameter-gradients"}


@pytest.mark.parametrize("guide", GUIDES, ids=[g.stem for g in GUIDES])
def test_guide_runs(guide, server, capsys, monkeypatch):
    monkeypatch.chdir(guide.parents[2])  # the guides run from the repository root
    blocks = re.findall(r"```python\n(.*?)```", guide.read_text(), re.S)
    assert blocks, f"{guide.name} has no code"
    code = "\n".join(blocks).replace("127.0.0.1:50051", server.target)
    exec(compile(code, str(guide), "exec"), {"__name__": "guide"})
    assert capsys.readouterr().out.strip()
