"""MkDocs hooks: docstrings written for ``help()`` and doctest read well on the site.

Docstrings hold bare doctest examples (``>>>`` lines) and the odd Sphinx role
(``:meth:`Client.upload```). Markdown would render the first as nested blockquotes and
the second literally, so a Markdown preprocessor, added to every page's converter
(mkdocstrings renders docstrings with the same extensions), fences doctest blocks as
``pycon`` code and turns roles into inline code.

>>> fence_doctests(["Text.", ">>> 1 + 1", "2", "", "More."])
['Text.', '```pycon', '>>> 1 + 1', '2', '```', '', 'More.']
>>> plain_roles("See :meth:`~jacserve.client.Client.upload` and :class:`Client`.")
'See `upload` and `Client`.'
"""

from __future__ import annotations

import re
from typing import Any

from markdown import Extension, Markdown
from markdown.preprocessors import Preprocessor

_ROLE = re.compile(r":(?:meth|class|func|attr|mod|data|exc|obj|ref):`(~?)([^`]+)`")
_FENCE = re.compile(r"^\s*(```|~~~)")


def plain_roles(text: str) -> str:
    """Sphinx roles as inline code (``~a.b.c`` keeps only ``c``, as Sphinx shows it)."""
    return _ROLE.sub(lambda m: f"`{m[2].rsplit('.', 1)[-1] if m[1] else m[2]}`", text)


def fence_doctests(lines: list[str]) -> list[str]:
    """Each run of doctest lines (from ``>>>`` to the next blank line) fenced as pycon,
    outside existing fences, at the block's own indentation."""
    out: list[str] = []
    inside_fence = in_doctest = False
    indent = ""
    for line in lines:
        if not in_doctest and _FENCE.match(line):
            inside_fence = not inside_fence
        elif not inside_fence and not in_doctest and line.lstrip().startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}```pycon")
            in_doctest = True
        elif in_doctest and not line.strip():
            out.append(f"{indent}```")
            in_doctest = False
        out.append(line)
    if in_doctest:
        out.append(f"{indent}```")
    return out


class _DocstringText(Preprocessor):
    def run(self, lines: list[str]) -> list[str]:
        return fence_doctests([plain_roles(line) for line in lines])


class DocstringText(Extension):
    """The preprocessor as a Markdown extension (before fenced code is parsed)."""

    def extendMarkdown(self, md: Markdown) -> None:
        md.preprocessors.register(_DocstringText(md), "jacserve_docstrings", 40)


def on_config(config: Any) -> Any:
    """MkDocs hook: add :class:`DocstringText` to every page's Markdown extensions."""
    config.markdown_extensions.append(DocstringText())
    return config
