"""report.html: its curves against scikit-learn, its picks, contours and overlays against brute
force, and the pages built from a workdir's files (fit run, absent files, sweep, predictions)."""
import base64
import csv
import glob
import html.parser
import io
import json
import os

import matplotlib
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import precision_recall_curve, roc_curve

from softpatch_jax.data import preprocess, synthetic
from softpatch_jax.data.samples import Sample
from softpatch_jax.io import html_report
from softpatch_jax.files import write_json


# 1. Curves, picks, contours, overlays.

def _labelled(seed, n=400, ties=False):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.3
    scores = rng.normal(size=n) + 1.2 * labels
    if ties:
        scores = np.round(scores * 3)  # many equal scores
    return labels, scores


@pytest.mark.parametrize("ties", [False, True])
def test_full_curves_equal_sklearn(ties):
    labels, scores = _labelled(0, ties=ties)
    c = html_report.curves(labels, scores, max_points=10**6)  # nothing thinned
    fpr, tpr, th = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(c["roc"]["fpr"], fpr, rtol=0, atol=1e-15)
    np.testing.assert_allclose(c["roc"]["tpr"], tpr, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(c["roc"]["threshold"][1:], th[1:])
    assert c["roc"]["threshold"][0] is None
    precision, recall, th_pr = precision_recall_curve(labels, scores)
    # scikit-learn lists the PR curve from the lowest threshold up, ending at (recall 0, 1).
    np.testing.assert_allclose(c["pr"]["precision"], precision[::-1], rtol=0, atol=1e-15)
    np.testing.assert_allclose(c["pr"]["recall"], recall[::-1], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(c["pr"]["threshold"][1:], th_pr[::-1])
    assert (c["n_pos"], c["n_neg"]) == (labels.sum(), (~labels).sum())


def test_thinned_curves_keep_exact_points_and_bound_the_gaps():
    rng = np.random.default_rng(1)
    masks = rng.random((6, 40, 40)) < 0.1
    maps = (rng.normal(size=(6, 40, 40)) + masks).astype(np.float32)  # float32 anomaly maps
    full = html_report.curves(masks, maps, max_points=10**7)
    thin = html_report.curves(masks, maps, max_points=50)
    for kind, (xk, yk) in (("roc", ("fpr", "tpr")), ("pr", ("recall", "precision"))):
        x, y = np.array(full[kind][xk]), np.array(full[kind][yk])
        kept = [full[kind]["threshold"].index(t) for t in thin[kind]["threshold"]]
        assert kept[0] == 0 and kept[-1] == x.size - 1 and len(kept) <= 51
        np.testing.assert_array_equal(thin[kind][xk], x[kept])
        np.testing.assert_array_equal(thin[kind][yk], y[kept])
        # Brute force: the stretch of curve between two kept points, less its last step,
        # is at most 1/50 of the curve's length (L1).
        step = np.abs(np.diff(x)) + np.abs(np.diff(y))
        for a, b in zip(kept[:-1], kept[1:]):
            assert step[a:b - 1].sum() <= step.sum() / 50 + 1e-12


def test_curves_need_both_classes():
    assert html_report.curves(np.zeros(5), np.arange(5.0)) is None
    assert html_report.curves(np.ones(5), np.arange(5.0)) is None
    with pytest.raises(ValueError, match="differ in size"):
        html_report.curves(np.zeros(5), np.arange(4.0))


def test_gallery_picks_match_sorting_by_hand():
    labels, scores = _labelled(2, n=60, ties=True)
    picks = html_report.gallery_picks(labels, scores, count=6)
    by_score = sorted(range(60), key=lambda i: (-scores[i], i))
    assert picks["highest"] == by_score[:6]
    assert picks["false_alarms"] == [i for i in by_score if not labels[i]][:6]
    assert picks["misses"] == [i for i in sorted(range(60), key=lambda i: (scores[i], i))
                               if labels[i]][:6]
    few = html_report.gallery_picks([0, 0, 1], [0.1, 0.3, 0.2], count=6)
    assert few == {"highest": [1, 2, 0], "misses": [2], "false_alarms": [1, 0]}


def test_contour_matches_brute_force():
    rng = np.random.default_rng(3)
    mask = np.zeros((24, 24), bool)
    mask[3:11, 5:14] = True
    mask[0:4, 18:24] = True  # touches the frame
    mask |= rng.random((24, 24)) < 0.05
    inside = np.pad(mask, 1)  # the frame is outside
    expected = np.zeros_like(mask)
    for y in range(24):
        for x in range(24):
            neighbours = [inside[y, x + 1], inside[y + 2, x + 1], inside[y + 1, x],
                          inside[y + 1, x + 2]]
            expected[y, x] = (not all(neighbours)) if mask[y, x] else any(neighbours)
    np.testing.assert_array_equal(html_report.contour(mask), expected)


def test_overlay_blends_the_heat_map_and_draws_the_contour():
    rng = np.random.default_rng(4)
    image = rng.random((16, 16, 3))
    amap = rng.random((16, 16)) * 4
    mask = np.zeros((16, 16), bool)
    mask[4:9, 4:9] = True
    out = html_report.overlay(image, amap, mask, 1.0, 3.0)
    assert out.shape == (16, 32 + html_report.GAP, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :16], np.round(image * 255))
    assert (out[:, 16:16 + html_report.GAP] == 255).all()
    jet = matplotlib.colormaps["jet"](np.clip((amap - 1.0) / 2.0, 0, 1))[..., :3]
    expected = np.round(((1 - 0.45) * image + 0.45 * jet) * 255)
    edge = html_report.contour(mask)
    right = out[:, 16 + html_report.GAP:]
    np.testing.assert_array_equal(right[~edge], expected[~edge])
    assert (right[edge] == 255).all()
    flat = html_report.overlay(image, np.ones((16, 16)), None, 1.0, 1.0)  # an empty scale
    jet0 = matplotlib.colormaps["jet"](0.0)[:3]
    np.testing.assert_array_equal(flat[:, 16 + html_report.GAP:],
                                  np.round(((1 - 0.45) * image + 0.45 * np.array(jet0)) * 255))


# 2. The assets and the pages, from files on disk.

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


def _samples(root):
    """The generated category's test samples (good, then blob) with their masks."""
    base = os.path.join(root, "widget")
    out = []
    for path in sorted(glob.glob(os.path.join(base, "test", "*", "*.png"))):
        defect = os.path.basename(os.path.dirname(path))
        name = os.path.relpath(path, base)
        mask = None if defect == "good" else os.path.join(
            base, "ground_truth", defect, os.path.basename(path)[:-4] + "_mask.png")
        out.append(Sample(path, int(defect != "good"), defect, name, mask))
    return out


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    """A generated test set with anomaly maps that light up the defects: (samples, scores,
    maps, masks)."""
    root = str(tmp_path_factory.mktemp("data"))
    synthetic.make_mvtec_category(root, "widget", n_train=4, n_good=6, n_defect=6, size=32)
    samples = _samples(root)
    masks = np.stack([preprocess.load_sample_mask(s, 32, 32) for s in samples])
    rng = np.random.default_rng(5)
    maps = (rng.random(masks.shape) + 2.0 * masks).astype(np.float32)
    scores = maps.reshape(len(samples), -1).max(1) + rng.normal(0, 0.5, len(samples))
    return samples, scores, maps, masks


def _fit_workdir(path, category, threshold=1.9):
    """DIR as a fit run leaves it: metrics.json, categories/widget/* (assets by report_assets)
    and a second category `bare` whose folder holds nothing but result.json."""
    samples, scores, maps, masks = category
    folder = os.path.join(path, "categories", "widget")
    os.makedirs(folder)
    html_report.report_assets(folder, samples, scores, maps, masks, 32, 32, count=4)
    with open(os.path.join(folder, "scores.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "label", "defect", "score"])
        w.writerows([s.name, s.label, s.defect, repr(float(v))] for s, v in zip(samples, scores))
    injected = [{"name": samples[-1].name, "defect": "blob"},  # also a test image: overlap
                {"name": "test/blob/<b>extra</b>.png", "defect": "blob", "rotation_deg": 1.5,
                 "shift_x": 0.01, "shift_y": -0.02}]
    write_json(os.path.join(folder, "noise.json"), injected)
    write_json(os.path.join(folder, "threshold.json"),
               {"image_threshold": threshold, "pixel_threshold": None, "false_reject": 0.01,
                "source": "leave_one_out"})
    audit = [("train/good/003.png", 0.9, 1, 1, 1), ("train/good/000.png", 0.5, 2, 0, 0),
             ("train/good/001.png", 0.4, 3, 0, 1), ("train/good/002.png", 0.1, 4, 0, 0)]
    with open(os.path.join(folder, "audit_widget.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "score", "rank", "flagged", "injected"])
        w.writerows(audit)
    result = {"image_auroc": 0.875, "pixel_auroc": 0.99, "aupro": 0.9, "image_f1_max": 0.8,
              "image_auroc_per_defect": {"blob": 0.875, "scratch": 0.5}, "n_train_clean": 4,
              "n_noise": 2, "n_test": 12, "n_test_anomalous": 6, "image_precision": 0.75,
              "audit_auroc": 0.75, "seconds": 3.5, "threshold_image": threshold}
    write_json(os.path.join(folder, "result.json"), result)
    os.makedirs(os.path.join(path, "categories", "bare"))
    bare = {"image_auroc": 0.5, "n_test": 3, "note": "a note"}
    write_json(os.path.join(path, "categories", "bare", "result.json"), bare)
    write_json(os.path.join(path, "metrics.json"),
               {"categories": {"bare": bare, "widget": result}, "mean": {},
                "config": {"seed": 0, "data": {"name": "mvtec", "category": "widget"},
                           "noise": {"ratio": 0.5, "mode": "", "overlap": True},
                           "model": {"method": "softpatch"}}})
    return folder


def test_report_assets_write_the_curves_and_the_gallery(tmp_path, category):
    samples, scores, maps, masks = category
    html_report.report_assets(str(tmp_path), samples, scores, maps, masks, 32, 32, count=4)
    stored = json.loads((tmp_path / "curves.json").read_text())
    labels = np.array([s.label for s in samples])
    assert stored["image"] == html_report.curves(labels, scores)
    assert stored["pixel"] == html_report.curves(masks, maps)
    gallery = json.loads((tmp_path / "gallery.json").read_text())
    picks = html_report.gallery_picks(labels, scores, 4)
    assert gallery["groups"] == {k: [str(i) for i in v] for k, v in picks.items()}
    assert gallery["scale"] == [float(maps.min()), float(maps.max())]
    for i in {i for v in picks.values() for i in v}:
        item = gallery["images"][str(i)]
        assert (item["name"], item["label"], item["score"]) == (samples[i].name,
                                                                samples[i].label, scores[i])
        img = np.asarray(Image.open(tmp_path / item["file"]), np.float64)
        image = np.clip(preprocess.load_image(samples[i].path, 32, 32) * preprocess.IMAGENET_STD
                        + preprocess.IMAGENET_MEAN, 0, 1)
        mask = masks[i] if masks[i].any() else None
        want = html_report.overlay(image, maps[i], mask, maps.min(), maps.max())
        assert img.shape == want.shape and np.abs(img - want).mean() < 6  # JPEG
    # Without masks: image curves only, the gallery without contours.
    (tmp_path / "nomask").mkdir()
    html_report.report_assets(str(tmp_path / "nomask"), samples, scores, maps, None, 32, 32)
    assert set(json.loads((tmp_path / "nomask" / "curves.json").read_text())) == {"image"}


def test_fit_report_from_the_files_on_disk(tmp_path, category):
    samples, scores, maps, masks = category
    folder = _fit_workdir(str(tmp_path), category, threshold=1.9)
    path = html_report.write_report(str(tmp_path))
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
    folder = _fit_workdir(str(tmp_path), category)
    for name in ("threshold.json", "audit_widget.csv", "noise.json", "curves.json"):
        os.remove(os.path.join(folder, name))
    result = json.load(open(os.path.join(folder, "result.json")))
    del result["threshold_image"]
    metrics = json.load(open(tmp_path / "metrics.json"))
    metrics["categories"]["widget"] = result
    write_json(str(tmp_path / "metrics.json"), metrics)
    page = _Page(open(html_report.write_report(str(tmp_path))).read())
    assert not page.all("line", **{"class": "threshold"}) and not page.all("polyline")
    assert "audit score by rank" not in page.words and "rejected" not in page.words
    assert "No noise was injected" in page.words
    assert page.all("img")  # the gallery still shows


def _point(workdir, category, mode, ratio, method, auroc):
    rel = os.path.join("points", category, mode, f"ratio{ratio:g}_{method}")
    os.makedirs(os.path.join(workdir, rel))
    write_json(os.path.join(workdir, rel, "result.json"),
               {"category": category, "mode": mode, "ratio": ratio, "method": method,
                "image_auroc": auroc, "n_test": 10, "seconds": 1.0,
                "config": {"data": {"name": "mvtec"}, "noise": {"ratio": ratio}}})
    return rel


def test_sweep_report_links_every_point_to_its_report(tmp_path, category):
    w = str(tmp_path)
    rels = [_point(w, c, "overlap", r, m, 0.5 + r + (m == "lof") * 0.1 + (c == "b") * 0.05)
            for c in ("a", "b") for r in (0.0, 0.1) for m in ("lof", "none")]
    samples, scores, maps, masks = category  # one point with its assets
    html_report.report_assets(os.path.join(w, rels[0]), samples, scores, maps, masks, 32, 32)
    path = html_report.write_report(w)
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
    _fit_workdir(str(tmp_path), category)
    pred = tmp_path / "predictions" / "widget"
    (pred / "maps" / "lot1").mkdir(parents=True)
    rows = [("lot1/a.png", 0.2), ("lot1/b.png", 3.0), ("c.png", 1.0)]
    with open(pred / "scores.csv", "w") as f:
        f.write("name,label,defect,score\n")
        f.writelines(f"{n},0,unknown,{s}\n" for n, s in rows)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(pred / "maps" / "lot1" / "b.png")
    page = _Page(open(html_report.write_report(str(tmp_path))).read())
    assert page.all("section", id="predictions")
    assert "3 images scored" in page.words
    text = page.words
    assert text.index("lot1/b.png 3.0") < text.index("c.png 1.0") < text.index("lot1/a.png 0.2")
    maps = [i for i in page.all("img") if i["src"].startswith("data:image/png")]
    assert len(maps) == 1  # only b has a map on disk


# 3. Time by stage.

STAGES = {"alignment": 2.0, "features_train": 4.5, "coreset": 9.0, "calibration": 1.25,
          "scoring": 3.0}


def _with_stages(path, category, **fields):
    """A fit workdir whose category `widget` has `fields` (stage_seconds, seconds, ...) in its
    result.json and in metrics.json -> the report page."""
    folder = _fit_workdir(path, category)
    result = {**json.load(open(os.path.join(folder, "result.json"))), **fields}
    write_json(os.path.join(folder, "result.json"), result)
    metrics = json.load(open(os.path.join(path, "metrics.json")))
    metrics["categories"]["widget"] = result
    write_json(os.path.join(path, "metrics.json"), metrics)
    return open(html_report.write_report(path)).read()


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
    assert fills[2] == html_report.ANOMALY_COLOUR and len(set(fills)) == 2  # the slowest stands out


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
        assert html_report._stage_chart({"stage_seconds": odd, "seconds": 5.0}) == ""


def test_stage_chart_escapes_its_text(tmp_path, category):
    text = _with_stages(str(tmp_path), category, seconds=3.0,
                        stage_seconds={"<b>odd</b>": 2.0, "coreset": 1.0})
    assert "<b>odd</b>" not in text and "&lt;b&gt;odd&lt;/b&gt;" in text
    words = _Page(text).words
    assert "<b>odd</b> 2.0 s" in words and "coreset 1.0 s" in words
    assert words.index("coreset 1.0 s") < words.index("<b>odd</b> 2.0 s")  # unknown names last


def test_sweep_point_report_shows_its_stage_chart(tmp_path):
    w = str(tmp_path)
    rel = _point(w, "a", "overlap", 0.1, "lof", 0.7)
    result = json.load(open(os.path.join(w, rel, "result.json")))
    result.update(stage_seconds={"coreset": 0.4, "scoring": 0.2}, seconds=1.0)
    write_json(os.path.join(w, rel, "result.json"), result)
    html_report.write_report(w)
    point = _Page(open(os.path.join(w, rel, "report.html")).read())
    assert "coreset 0.4 s" in point.words and "scoring 0.2 s" in point.words
    assert "other (unaccounted)" not in point.words  # 0.4 s unaccounted
    assert "total 1.0 s" in point.words
    sweep = _Page(open(os.path.join(w, "report.html")).read())
    assert not sweep.all("svg", **{"class": "chart stages"})  # the sweep page stays as it was
