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


def check_self_contained(text: str) -> int:
    """Assert that an HTML page loads nothing from outside itself; return the number of embedded PNGs.

    No http(s) or protocol-relative src/href, no ``<script>``, no ``url(...)``
    or ``@import`` in styles, and every ``<img>`` a ``data:image/png;base64``
    URI that decodes to a PNG.
    """
    p = _Resources()
    p.feed(text)
    remote = [u for u in p.urls if re.match(r"\s*(https?:)?//", u, re.I)]
    assert not remote, remote
    assert p.scripts == 0
    assert not re.search(r"url\(|@import", text)
    assert p.imgs
    for src in p.imgs:
        head, _, payload = src.partition(",")
        assert head == "data:image/png;base64", head[:40]
        assert base64.b64decode(payload, validate=True)[:8] == PNG
    return len(p.imgs)
