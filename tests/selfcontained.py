"""Test helper: is an HTML page self-contained (nothing loaded from outside it)?"""

import base64
import re
from html.parser import HTMLParser

PNG = b"\x89PNG\r\n\x1a\n"


class _Resources(HTMLParser):
    """Every src/href of a page, and the src of each <img>."""

    def __init__(self):
        super().__init__()
        self.urls, self.imgs, self.scripts = [], [], 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.urls += [a[k] for k in ("src", "href") if k in a]
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        self.scripts += tag == "script"


def _scan(text: str) -> tuple[list[str], int]:
    """What would make the page load something from outside itself, and its number of ``<img>``."""
    p = _Resources()
    p.feed(text)
    problems = [f"remote resource {u}" for u in p.urls if re.match(r"\s*(https?:)?//", u, re.I)]
    if p.scripts:
        problems.append(f"{p.scripts} <script> element(s)")
    if re.search(r"url\(|@import", text):
        problems.append("CSS url() or @import")
    if not p.imgs:
        problems.append("no <img> at all")
    for src in p.imgs:
        head, _, payload = src.partition(",")
        if head != "data:image/png;base64":
            problems.append(f"<img> not a PNG data URI: {src[:60]}")
            continue
        try:
            ok = base64.b64decode(payload, validate=True)[:8] == PNG
        except ValueError:
            ok = False
        if not ok:
            problems.append("<img> data URI does not decode to a PNG")
    return problems, len(p.imgs)


def self_contained_problems(text: str) -> list[str]:
    """What would make the page load something from outside itself (empty when none)."""
    return _scan(text)[0]


def check_self_contained(text: str) -> int:
    """Assert that an HTML page loads nothing from outside itself; return the number of embedded PNGs.

    No http(s) or protocol-relative src/href, no ``<script>``, no ``url(...)``
    or ``@import`` in styles, and every ``<img>`` a ``data:image/png;base64``
    URI that decodes to a PNG.
    """
    problems, n_img = _scan(text)
    assert not problems, problems
    return n_img
