"""README.md's client example runs as written (against the test server)."""

from __future__ import annotations

import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_client_example_runs(server, capsys):
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert '"127.0.0.1:50051"' in code
    exec(compile(code.replace("127.0.0.1:50051", server.target), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "auto: reverse" in printed and "dict_keys(['0.weight', '0.bias'])" in printed
