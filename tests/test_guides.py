"""The guides in docs/guides run as written, against the test server."""

from __future__ import annotations

import pathlib
import re

import pytest

GUIDES = sorted((pathlib.Path(__file__).resolve().parent.parent / "docs" / "guides").glob("*.md"))


@pytest.mark.parametrize("guide", GUIDES, ids=[g.stem for g in GUIDES])
def test_guide_runs(guide, server, capsys, monkeypatch):
    monkeypatch.chdir(guide.parents[2])  # the guides run from the repository root
    blocks = re.findall(r"```python\n(.*?)```", guide.read_text(), re.S)
    assert blocks, f"{guide.name} has no code"
    code = "\n".join(blocks).replace("127.0.0.1:50051", server.target)
    exec(compile(code, str(guide), "exec"), {"__name__": "guide"})
    assert capsys.readouterr().out.strip()
