"""report/pages.py: the pages built from a workdir's files (fit run, absent files, sweep,
predictions) and the time-by-stage chart."""
import base64
import html.parser
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from softpatch_jax.files import write_json
from softpatch_jax.io import assets
from softpatch_jax.report import charts, pages, write_report

from run_folders import category, fit_workdir, sweep_point  # noqa: F401 (category: fixture)


class _Page(html.parser.HTMLParser):
    """Tags of a page: every element's attributes, and the text."""

    def __init__(self, text):
        super().__init__()
        self.tags, self.text = [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def all(self, tag, **attrs):
        return [a for t, a in self.tags if t == tag
                and all(a.get(k) == v for k, v in attrs.items())]

    @property
    def words(self):
        return " ".join(" ".join(self.text).split())


# 1. The pages, from the files on disk.

def test_fit_report_from_the_files_on_disk(tmp_path, category):
    samples, scores, maps, masks = category
    folder = fit_workdir(str(tmp_path), category, threshold=1.9)
    path = write_report(str(tmp_path))
    assert path == str(tmp_path / "report.html")
    page = _Page(open(path).read())
    words = page.words
    # The summary table: a row per category, linked to its section, and the mean row.
    assert [a["href"] for a in page.all("a") if a.get("href", "").startswith("#cat-")][:2] == \
        ["#cat-bare", "#cat-widget"]
    assert "mean 0.6875" in words and "widget 0.8750 0.9900 0.9000" in words
    # Images: every gallery entry, embedded, decodable.
    gallery = json.load(open(os.path.join(folder, "gallery.json")))
    imgs = page.all("img")
    assert len(imgs) == sum(len(v) for v in gallery["groups"].values())
    for img in imgs:
        head, data = img["src"].split(",", 1)
        assert head == "data:image/jpeg;base64"
        Image.open(io.BytesIO(base64.b64decode(data))).verify()
    # Curves: image and pixel ROC and PR, the histogram; the operating point at the threshold.
    assert len(page.all("polyline", **{"class": "curve"})) == 4
    labels = np.array([s.label for s in samples])
    tp, fp = int(np.sum(scores[labels == 1] >= 1.9)), int(np.sum(scores[labels == 0] >= 1.9))
    assert f"FPR {fp / 6:.3f}, TPR {tp / 6:.3f}" in words
    assert f"It rejects {tp} of the 6 anomalous test images and {fp} of the 6 normal" in words
    assert len(page.all("line", **{"class": "threshold"})) == 1
    rejected = sum(1 for g in gallery["groups"].values() for i in g
                   if gallery["images"][i]["score"] >= 1.9)
    assert words.count("rejected") == rejected
    # Data: counts, the overlap (one injected image is also a test image), escaped names.
    assert "widget 4 2 1 6 6" in words
    assert "test/blob/<b>extra</b>.png" in words and "<b>extra</b>" not in open(path).read()
    assert "rotated 1.50 deg" in words
    # Audit: the ranked images, injected marked.
    assert "1 of the 2 injected ones are among the top 2; 1 flagged." in words
    assert words.count("injected") >= 2
    # The category without any file still gets its section; the note shows.
    assert page.all("section", id="cat-bare") and "a note" in words
    assert "image AUROC blob 0.8750 scratch 0.5000" in words  # per defect


def test_fit_report_without_thresholds_or_audit(tmp_path, category):
    folder = fit_workdir(str(tmp_path), category)
    for name in ("threshold.json", "audit_widget.csv", "noise.json", "curves.json"):
        os.remove(os.path.join(folder, name))
    result = json.load(open(os.path.join(folder, "result.json")))
    del result["threshold_image"]
    metrics = json.load(open(tmp_path / "metrics.json"))
    metrics["categories"]["widget"] = result
    write_json(str(tmp_path / "metrics.json"), metrics)
    page = _Page(open(write_report(str(tmp_path))).read())
    assert not page.all("line", **{"class": "threshold"}) and not page.all("polyline")
    assert "audit score by rank" not in page.words and "rejected" not in page.words
    assert "No noise was injected" in page.words
    assert page.all("img")  # the gallery still shows


def test_sweep_report_links_every_point_to_its_report(tmp_path, category):
    w = str(tmp_path)
    rels = [sweep_point(w, c, "overlap", r, m, 0.5 + r + (m == "lof") * 0.1 + (c == "b") * 0.05)
            for c in ("a", "b") for r in (0.0, 0.1) for m in ("lof", "none")]
    samples, scores, maps, masks = category  # one point with its assets
    assets.report_assets(os.path.join(w, rels[0]), samples, scores, maps, masks, 32, 32)
    path = write_report(w)
    page = _Page(open(path).read())
    links = [a["href"] for a in page.all("a", **{"class": "point"})]
    assert sorted(links) == sorted(f"{r}/report.html" for r in rels)  # one per chart point
    for rel in rels:
        assert os.path.isfile(os.path.join(w, rel, "report.html"))
    assert len(page.all("svg", **{"class": "chart"})) == 2  # per category x mode x metric
    assert "mean over categories" in page.words.lower()
    assert "overlap, noise 0.1, lof 0.7250" in page.words  # (0.7 + 0.75) / 2
    assert "a overlap 0.1 lof 0.7000 1.0 report" in page.words  # the row of one point
    point = _Page(open(os.path.join(w, rels[0], "report.html")).read())
    assert point.all("a", href="../../../../report.html") and point.all("img")
    assert len(point.all("polyline", **{"class": "curve"})) == 4


def test_predictions_section_shows_what_is_there(tmp_path, category):
    fit_workdir(str(tmp_path), category)
    pred = tmp_path / "predictions" / "widget"
    (pred / "maps" / "lot1").mkdir(parents=True)
    rows = [("lot1/a.png", 0.2), ("lot1/b.png", 3.0), ("c.png", 1.0)]
    with open(pred / "scores.csv", "w") as f:
        f.write("name,label,defect,score\n")
        f.writelines(f"{n},0,unknown,{s}\n" for n, s in rows)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(pred / "maps" / "lot1" / "b.png")
    page = _Page(open(write_report(str(tmp_path))).read())
    assert page.all("section", id="predictions")
    assert "3 images scored" in page.words
    text = page.words
    assert text.index("lot1/b.png 3.0") < text.index("c.png 1.0") < text.index("lot1/a.png 0.2")
    maps = [i for i in page.all("img") if i["src"].startswith("data:image/png")]
    assert len(maps) == 1  # only b has a map on disk


# 2. Time by stage.

STAGES = {"alignment": 2.0, "features_train": 4.5, "coreset": 9.0, "calibration": 1.25,
          "scoring": 3.0}


def _with_stages(path, category, **fields):
    """A fit workdir whose category `widget` has `fields` (stage_seconds, seconds, ...) in its
    result.json and in metrics.json -> the report page."""
    folder = fit_workdir(path, category)
    result = {**json.load(open(os.path.join(folder, "result.json"))), **fields}
    write_json(os.path.join(folder, "result.json"), result)
    metrics = json.load(open(os.path.join(path, "metrics.json")))
    metrics["categories"]["widget"] = result
    write_json(os.path.join(path, "metrics.json"), metrics)
    return open(write_report(path)).read()


def _bars(page):
    """[(width, fill)] of the bars in the time-by-stage charts, top to bottom."""
    out, inside = [], False
    for tag, attrs in page.tags:
        if tag == "svg":
            inside = attrs.get("class") == "chart stages"
        elif tag == "rect" and attrs.get("class") == "bar" and inside:
            out.append((float(attrs["width"]), attrs["fill"]))
    return out


def test_stage_chart_shows_every_stage_scaled_to_the_largest(tmp_path, category):
    text = _with_stages(str(tmp_path), category, stage_seconds=STAGES, seconds=19.9,
                        seconds_compile=3.4)
    page = _Page(text)
    assert len(page.all("svg", **{"class": "chart stages"})) == 1  # widget only, not bare
    words = page.words
    labels = ("alignment 2.0 s", "features_train 4.5 s", "coreset 9.0 s", "calibration 1.2 s",
              "scoring 3.0 s")  # in the order the run goes, not as stored (sorted keys)
    assert all(label in words for label in labels)
    order = [words.index(label) for label in labels]
    assert order == sorted(order)
    assert "total 19.9 s; of which compiling 3.4 s" in words
    bars = _bars(page)
    widths = [w for w, _ in bars]
    assert len(widths) == 5  # 19.9 - 19.75 = 0.15 s unaccounted: no bar for it
    assert "other (unaccounted)" not in words
    assert widths[2] == max(widths)  # coreset, the largest, spans the whole width
    assert widths[1] / widths[2] == pytest.approx(4.5 / 9.0, abs=0.005)
    assert widths[0] / widths[4] == pytest.approx(2.0 / 3.0, abs=0.005)
    fills = [f for _, f in bars]
    assert fills[2] == charts.ANOMALY_COLOUR and len(set(fills)) == 2  # the slowest stands out


def test_stage_chart_shows_unaccounted_time_over_half_a_second(tmp_path, category):
    page = _Page(_with_stages(str(tmp_path), category, stage_seconds=STAGES, seconds=25.75))
    words = page.words
    assert "other (unaccounted) 6.0 s" in words  # 25.75 - 19.75
    assert "total 25.8 s" in words and "compiling" not in words  # no seconds_compile
    widths = [w for w, _ in _bars(page)]
    assert len(widths) == 6 and widths[5] / widths[2] == pytest.approx(6.0 / 9.0, abs=0.005)
    # Exactly half a second: still no bar.
    edge = tmp_path / "edge"
    edge.mkdir()
    words = _Page(_with_stages(str(edge), category, stage_seconds=STAGES, seconds=20.25)).words
    assert "other (unaccounted)" not in words and "total 20.2 s" in words  # 20.25 rounds even
    # Without the total: the stages' sum, no unaccounted bar.
    bare = tmp_path / "bare"
    bare.mkdir()
    words = _Page(_with_stages(str(bare), category, stage_seconds=STAGES, seconds=None)).words
    assert "stages sum to 19.8 s" in words and "other (unaccounted)" not in words


def test_results_without_stage_seconds_show_no_stage_chart(tmp_path, category):
    page = _Page(_with_stages(str(tmp_path), category, seconds_compile=1.0))
    assert not page.all("svg", **{"class": "chart stages"})
    assert "seconds by stage" not in page.words and "of which compiling" not in page.words
    for odd in ({}, {"coreset": "fast", "scoring": None}, [1, 2]):  # nothing to draw
        assert pages._stage_chart({"stage_seconds": odd, "seconds": 5.0}) == ""


def test_stage_chart_escapes_its_text(tmp_path, category):
    text = _with_stages(str(tmp_path), category, seconds=3.0,
                        stage_seconds={"<b>odd</b>": 2.0, "coreset": 1.0})
    assert "<b>odd</b>" not in text and "&lt;b&gt;odd&lt;/b&gt;" in text
    words = _Page(text).words
    assert "<b>odd</b> 2.0 s" in words and "coreset 1.0 s" in words
    assert words.index("coreset 1.0 s") < words.index("<b>odd</b> 2.0 s")  # unknown names last


def test_sweep_point_report_shows_its_stage_chart(tmp_path):
    w = str(tmp_path)
    rel = sweep_point(w, "a", "overlap", 0.1, "lof", 0.7)
    result = json.load(open(os.path.join(w, rel, "result.json")))
    result.update(stage_seconds={"coreset": 0.4, "scoring": 0.2}, seconds=1.0)
    write_json(os.path.join(w, rel, "result.json"), result)
    write_report(w)
    point = _Page(open(os.path.join(w, rel, "report.html")).read())
    assert "coreset 0.4 s" in point.words and "scoring 0.2 s" in point.words
    assert "other (unaccounted)" not in point.words  # 0.4 s unaccounted
    assert "total 1.0 s" in point.words
    sweep = _Page(open(os.path.join(w, "report.html")).read())
    assert not sweep.all("svg", **{"class": "chart stages"})  # the sweep page stays as it was
