"""Render a fit report and open it in headless Chromium: does the page show its figures?

Usage::

    python benchmarks/check_report.py                # runs `jrinfer demo` into a temporary folder
    python benchmarks/check_report.py FIT_DIR        # renders FIT_DIR/report.html (FIT_DIR: a `jrinfer fit --out`)
    python benchmarks/check_report.py --keep shot.png

Checks, in order:

1. the page is self-contained: no http(s) or protocol-relative src/href, no
   script, no CSS url()/@import, every <img> a PNG data URI that decodes;
2. when Chromium is installed (``chromium``, ``chromium-browser``,
   ``google-chrome``; ``apt-get install chromium``), a headless screenshot of
   the page with networking disabled shows the figures: enough pixels of the
   posterior-predictive band's orange and of the plot lines.

Exit status 0 when every check that could run passed (the browser check is
reported as skipped without Chromium), 1 otherwise.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's jrinfer, not an installed one

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from selfcontained import self_contained_problems  # noqa: E402  (one check, shared with the tests)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(page: Path, png: Path, height: int = 7000) -> None:
    """Headless Chromium screenshot of ``page`` (network off: nothing may load from outside)."""
    browser = _chromium()
    cmd = [
        browser, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--no-first-run",
        "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",  # any network request would fail
        f"--window-size=1200,{height}", f"--screenshot={png}", page.resolve().as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


def figure_pixels(png: Path) -> dict:
    """Counts of predictive-band orange and plot-blue pixels in a screenshot (the page itself has neither)."""
    import numpy as np
    from matplotlib.image import imread

    img = imread(png)[..., :3]
    img = (img * 255).astype(int) if img.dtype != np.uint8 else img.astype(int)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    # the 90 % predictive band: tab:orange (255, 127, 14) at alpha 0.28 on white = (255, 219, 188); not the
    # page's own orange (warning box border, tags: (224, 160, 48))
    orange = (r >= 248) & (g >= 210) & (g <= 228) & (b >= 178) & (b <= 198)
    blue = (b > 150) & (r < 120) & (b - r > 60)
    return {"orange": int(orange.sum()), "blue": int(blue.sum()), "height": int(img.shape[0])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("fit_dir", nargs="?", help="a `jrinfer fit --out` folder (default: run the demo)")
    ap.add_argument("--keep", default=None, metavar="PNG", help="also save the screenshot here")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="jrinfer-report-"))
    t0 = time.perf_counter()
    if args.fit_dir:
        from jrinfer.report import render_report

        page = render_report(args.fit_dir, tmp / "report.html")
    else:
        from jrinfer.cli import main as cli

        code = cli(["demo", "--out", str(tmp / "jrinfer-demo")])
        if code != 0:
            print(f"FAIL: jrinfer demo exited {code}")
            return 1
        page = tmp / "jrinfer-demo" / "report.html"
    print(f"rendered {page} in {time.perf_counter() - t0:.1f} s ({page.stat().st_size / 1e3:.0f} kB)")
    problems = self_contained_problems(page.read_text(encoding="utf-8"))
    for p in problems:
        print(f"FAIL: {p}")
    if not problems:
        print("ok: self-contained (no remote src/href, no script, every <img> a PNG data URI)")
    if _chromium() is None:
        print("skipped: no Chromium found (apt-get install chromium) for the browser check")
        return 1 if problems else 0
    shot = Path(args.keep) if args.keep else tmp / "screenshot.png"
    screenshot(page, shot)
    px = figure_pixels(shot)
    shown = px["orange"] > 2000 and px["blue"] > 2000
    print(f"{'ok' if shown else 'FAIL'}: headless Chromium screenshot {shot}: {px['orange']} orange and {px['blue']} "
          f"blue pixels (figures {'shown' if shown else 'missing'})")
    return 0 if shown and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
