"""report.html in a real browser: headless Chromium renders the reports of a small generated fit
(with predictions) and sweep; the dumped DOM shows that the page loaded without a script error
or a broken image and holds its tables, curves and gallery; the screenshot is not blank."""
import html.parser
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from softpatch_jax.pipeline import evaluate, predict, sweep
from softpatch_jax.report import pages, write_report

from conftest import load_config


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


CHROMIUM = _chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install -y "
    "chromium; .ci/run installs it)")


def _browse(page: str, profile: str, *args) -> subprocess.CompletedProcess:
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                          "--hide-scrollbars", f"--user-data-dir={profile}",
                          "--virtual-time-budget=10000", *args, "file://" + page],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return out


class _Dom(html.parser.HTMLParser):
    def __init__(self, text):
        super().__init__()
        self.tags = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def first(self, tag):
        return next(a for t, a in self.tags if t == tag)

    def count(self, tag, cls=None):
        return sum(1 for t, a in self.tags if t == tag and (cls is None or a.get("class") == cls))


def _loaded(page: str, profile: str) -> _Dom:
    """The DOM Chromium dumps after the load; asserts no script error and no broken image."""
    dom = _Dom(_browse(page, profile, "--dump-dom").stdout)
    root, body = dom.first("html"), dom.first("body")
    assert root.get("data-errors") == "0", root.get("data-error-text")
    assert body.get("data-ready") == "1"  # the load handler ran
    assert body.get("data-broken-images") == "0"
    assert int(body["data-images"]) == dom.count("img")
    return dom


def _not_blank(page: str, profile: str, path: str) -> np.ndarray:
    _browse(page, profile, f"--screenshot={path}", "--window-size=1280,1600")
    shot = np.asarray(Image.open(path).convert("RGB"), np.float64)
    assert shot.shape[:2] == (1600, 1280)
    assert shot.std() > 20 and len(np.unique(shot.reshape(-1, 3), axis=0)) > 500
    return shot


@pytest.fixture(scope="module")
def runs(mvtec_root, cache_dir, tmp_path_factory):
    """A fit with noise (overlap: thresholds, audit) and three predictions, and a 2-point
    sweep, on the generated data."""
    c = load_config("mvtec.py")
    c.data.update(dict(root=mvtec_root, category="widget", resize=64, image_size=64,
                       batch_size=8))
    c.noise.ratio, c.noise.overlap = 0.25, True
    c.denoise.lof_k = 3
    c.runtime.cache_dir = cache_dir
    fit = str(tmp_path_factory.mktemp("fit"))
    evaluate.train_and_evaluate(c, fit)
    images = [os.path.join(mvtec_root, "widget", "test", d, "000.png") for d in
              ("good", "blob", "scratch")]
    predict.predict_images(fit, images)
    write_report(fit)  # as the commands do (main.py, experiments/sweep.py)
    s = load_config("sweeps/noise.py")
    s.data.update(c.data.to_dict())  # a dict: image_size and tile are references
    s.denoise.lof_k, s.runtime.cache_dir = 3, cache_dir
    s.sweep.ratios, s.sweep.discriminators, s.sweep.modes = "0,0.25", "lof", "overlap"
    swept = str(tmp_path_factory.mktemp("sweep"))
    sweep.run_sweep(s, swept)
    write_report(swept)
    return fit, swept


def test_the_detector_of_errors_and_broken_images_fires(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text(pages._page("t", "", [], [
        '<img src="missing.png" alt="x"><script>no_such_function();</script>']))
    dom = _Dom(_browse(str(page), str(tmp_path / "profile"), "--dump-dom").stdout)
    assert int(dom.first("html")["data-errors"]) >= 2  # the script error and the failed load
    assert dom.first("body")["data-broken-images"] == "1"


def test_fit_report_renders_in_chromium(runs, tmp_path):
    fit, _ = runs
    page = os.path.join(fit, "report.html")
    dom = _loaded(page, str(tmp_path / "profile"))
    # Tables: results, decisions, audit, data, per-defect AUROC, config, predictions...
    assert dom.count("table") >= 6
    # Curves: image and pixel ROC and PR, the histogram and (where the fit audits its
    # training images) the audit ranks; each drawn.
    audited = os.path.isfile(os.path.join(fit, "categories", "widget", "audit_widget.csv"))
    assert dom.count("svg", "chart") == 5 + audited and dom.count("polyline", "curve") == 4
    # The gallery (up to 6 + 6 + 6 overlays) and the three predictions' maps, all loaded.
    assert dom.count("img") >= 6 + 3
    shot = _not_blank(page, str(tmp_path / "profile"), str(tmp_path / "fit.png"))
    assert np.abs(shot[10, 640] - [0x1f, 0x29, 0x37]).max() < 8  # the styled header


def test_sweep_and_point_reports_render_in_chromium(runs, tmp_path):
    _, swept = runs
    page = os.path.join(swept, "report.html")
    dom = _loaded(page, str(tmp_path / "profile"))
    links = [a["href"] for t, a in dom.tags if t == "a" and a.get("class") == "point"]
    assert len(links) == 2 * 3  # two points in the image AUROC, pixel AUROC and AUPRO charts
    for href in links:
        assert os.path.isfile(os.path.join(swept, href))
    _not_blank(page, str(tmp_path / "profile"), str(tmp_path / "sweep.png"))
    point = _loaded(os.path.join(swept, links[0]), str(tmp_path / "profile"))
    assert point.count("img") >= 6 and point.count("polyline", "curve") == 4
