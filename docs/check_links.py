"""Check the internal links of a built site: every href and src inside it names a file that exists, and every
#fragment an id on the page it points to. External links (http:, mailto:, ...) are not followed.

    mkdocs build --strict && python docs/check_links.py site

Exits 1 and lists each broken link (page, link, why) if there is one.
"""

from __future__ import annotations

import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit


class _Page(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name") if tag == "a" else ("id",):
            if attrs.get(key):
                self.ids.add(attrs[key])
        for key in ("href", "src"):
            if attrs.get(key) and not (tag == "link" and attrs.get("rel") in ("preconnect", "dns-prefetch")):
                self.links.append(attrs[key])


def _parse(path: Path, cache: dict[Path, _Page]) -> _Page:
    if path not in cache:
        page = _Page()
        page.feed(path.read_text(errors="replace"))
        cache[path] = page
    return cache[path]


def broken_links(site: Path) -> list[tuple[str, str, str]]:
    """(page, link, why) for every internal link of the built site that leads nowhere."""
    site, cache, broken = site.resolve(), {}, []
    for page_path in sorted(site.rglob("*.html")):
        for link in _parse(page_path, cache).links:
            url = urlsplit(link)
            if url.scheme or url.netloc or link.startswith("//"):
                continue  # external: not followed
            target = (
                page_path
                if not url.path
                else (site / url.path.lstrip("/") if url.path.startswith("/") else page_path.parent / unquote(url.path))
            )
            target = target.resolve()
            if target.is_dir():
                target = target / "index.html"
            where = str(page_path.relative_to(site))
            if not target.is_relative_to(site):
                broken.append((where, link, "points outside the site"))
            elif not target.exists():
                broken.append((where, link, "no such file"))
            elif url.fragment and target.suffix == ".html" and unquote(url.fragment) not in _parse(target, cache).ids:
                broken.append((where, link, f"no id {unquote(url.fragment)!r} on {target.relative_to(site)}"))
    return broken


def main(argv: list[str]) -> int:
    site = Path(argv[0] if argv else "site")
    if not (site / "index.html").exists():
        print(f"{site}/index.html not found: build the site first (mkdocs build --strict)", file=sys.stderr)
        return 2
    broken = broken_links(site)
    for where, link, why in broken:
        print(f"{where}: {link}: {why}")
    pages = sum(1 for _ in site.rglob("*.html"))
    print(f"check_links: {len(broken)} broken internal link(s) in {pages} pages of {site}", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
