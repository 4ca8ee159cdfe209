"""The docs site as a reader gets it: built with ``mkdocs build --strict``, every page's
doctest examples are highlighted code (not blockquotes), no Sphinx role shows literally,
nothing is fetched from another host (code is highlighted at build time, so offline too)
and no page's table of contents names an entry twice."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
from html.parser import HTMLParser

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
ROLE = re.compile(r":(meth|class|func|attr|mod|data|exc|obj):`")


class _Page(HTMLParser):
    """What the checks need from one HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.blockquote_depth = 0
        self.quoted_doctests = 0
        self.remote: list[str] = []
        self.toc: list[str] = []
        self._in_toc_link = False
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "blockquote":
            self.blockquote_depth += 1
        address = found.get("src") if tag == "script" else None
        if tag == "link" and found.get("rel") == "stylesheet":
            address = found.get("href")
        if (address or "").startswith(("http:", "https:", "//")):
            self.remote.append(str(address))
        self._in_toc_link = (
            tag == "a"
            and "nav-link" in (found.get("class") or "")
            and (found.get("href") or "").startswith("#")
        )

    def handle_endtag(self, tag: str) -> None:
        if tag == "blockquote":
            self.blockquote_depth -= 1
        if tag == "a":
            self._in_toc_link = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self.blockquote_depth and ">>>" in data:
            self.quoted_doctests += 1
        if self._in_toc_link and data.strip():
            self.toc.append(data.strip().lower())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("site")
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    return out


def _pages(site: pathlib.Path) -> dict[str, _Page]:
    pages = {}
    for path in sorted(site.rglob("*.html")):
        if path.name == "404.html":
            continue
        page = _Page()
        page.feed(path.read_text())
        pages[str(path.relative_to(site))] = page
    return pages


def test_doctests_render_as_highlighted_code_not_blockquotes(site: pathlib.Path):
    pages = _pages(site)
    assert {name: p.quoted_doctests for name, p in pages.items() if p.quoted_doctests} == {}
    client = (site / "reference" / "client" / "index.html").read_text()
    assert client.count('<span class="gp">&gt;&gt;&gt; </span>') > 20  # Pygments' prompt


def test_no_sphinx_role_shows_literally(site: pathlib.Path):
    shown = {n: ROLE.findall("".join(p.text)) for n, p in _pages(site).items()}
    assert {n: roles for n, roles in shown.items() if roles} == {}


def test_nothing_is_loaded_from_another_host(site: pathlib.Path):
    remote = {n: p.remote for n, p in _pages(site).items() if p.remote}
    assert remote == {}


def test_no_table_of_contents_names_an_entry_twice(site: pathlib.Path):
    for name, page in _pages(site).items():
        repeated = {entry for entry in page.toc if page.toc.count(entry) > 1}
        assert not repeated, f"{name}: {sorted(repeated)}"
