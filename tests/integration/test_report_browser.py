"""Render report.html in headless Chromium: no broken images, no console errors, a real screenshot.

Needs Debian's ``chromium`` (``.ci/run`` installs it); skipped with a reason when it is absent.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.integration.tiny_pipeline import tiny_pipeline

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

#: Injected at the top of <head> of a copy of the page: records script errors, console.error
#: calls and resource load failures (capture phase), then lists images that did not decode.
PROBE = """<script>
window.__errs = [];
window.addEventListener('error', function (e) {
  var t = e.target;
  if (t && t !== window && t.tagName) { __errs.push('failed to load ' + t.tagName + ' ' +
    String(t.src || t.href).slice(0, 60)); }
  else { __errs.push('script error: ' + e.message); }
}, true);
var __ce = console.error;
console.error = function () { __errs.push('console.error: ' + Array.from(arguments).join(' '));
  __ce.apply(console, arguments); };
window.addEventListener('load', function () {
  var imgs = Array.from(document.images);
  var broken = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; })
                   .map(function (i) { return i.alt || String(i.src).slice(0, 60); });
  var pre = document.createElement('pre');
  pre.id = '__probe';
  pre.textContent = JSON.stringify({n_images: imgs.length, broken: broken, errors: __errs});
  document.body.appendChild(pre);
});
</script>"""


def _chromium(args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-extensions",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={tmp / 'profile'}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def probe(html_path: Path, tmp: Path) -> dict[str, object]:
    """Load ``html_path`` (a probed copy of it) in Chromium; return the probe's findings."""
    text = html_path.read_text(encoding="utf-8")
    probed = tmp / f"probed_{html_path.name}"
    probed.write_text(text.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    r = _chromium(["--virtual-time-budget=10000", "--dump-dom", probed.as_uri()], tmp)
    m = re.search(r'<pre id="__probe">(.*?)</pre>', r.stdout, re.S)
    assert m, f"page did not finish loading in Chromium:\n{r.stderr[-2000:]}"
    import html as _html

    return json.loads(_html.unescape(m.group(1)))


def screenshot(html_path: Path, png: Path, tmp: Path) -> np.ndarray:
    r = _chromium(["--window-size=1280,2400", f"--screenshot={png}", html_path.as_uri()], tmp)
    assert png.is_file(), r.stderr[-2000:]
    from PIL import Image

    with Image.open(png) as im:
        return np.asarray(im.convert("RGB"))


needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (apt-get install chromium; .ci/run does it)"
)


@needs_chromium
def test_probe_catches_broken_images_and_script_errors(tmp_path: Path) -> None:
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>"
        "<img alt='broken' src='data:image/png;base64,AAAA'>"
        "<img alt='gone' src='missing.png'>"
        "<script>console.error('boom'); undefinedFunction();</script></body></html>"
    )
    found = probe(page, tmp_path)
    assert found["n_images"] == 2
    assert sorted(found["broken"]) == ["broken", "gone"]
    errors = " | ".join(found["errors"])
    assert "console.error: boom" in errors and "undefinedFunction" in errors
    assert "failed to load IMG" in errors


@needs_chromium
def test_report_renders_in_chromium(
    tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    cfg, res = tiny_pipeline(tiny_cohort, tmp_path_factory.mktemp("pipeline") / "out")
    report = Path(cfg.out_dir) / "report.html"
    assert res.report_path == report
    found = probe(report, tmp_path)
    n_tags = report.read_text(encoding="utf-8").count("<img ")
    assert found["n_images"] == n_tags >= 3
    assert found["broken"] == []
    assert found["errors"] == []
    shot = screenshot(report, tmp_path / "report.png", tmp_path)
    assert shot.shape[1] == 1280
    # the page really drew something: the red SYNTHETIC banner at the top, varied content below
    top = shot[:40].reshape(-1, 3).astype(int)
    assert ((top[:, 0] > 150) & (top[:, 1] < 80) & (top[:, 2] < 80)).mean() > 0.5
    assert shot[200:].std() > 20
