"""Text from files and config shown as text (issue 24): hostile file, defect, category and config
names go through every writer (report.html, Markdown tables, CSV, JSON, figures) and come out
inert, link to the right file, keep their table's shape, and read back as they went in."""
import csv
import dataclasses
import html.parser
import json
import os
import types
import urllib.parse

import numpy as np
import pytest

from softpatch_jax.io import assets, report, text
from softpatch_jax.files import write_json
from softpatch_jax.pipeline import evaluate, predict, sweep
from softpatch_jax.report import pages, runs, write_report

from run_folders import category, sweep_point  # noqa: F401 (category: a fixture)

# File names (relative sample names: '/' makes a sub-folder, as in test/good/000.png).
HOSTILE = ("<script>alert(1)</script>.png", "a\"b'c.png", "=cmd|' /C calc'!A0.png",
           "x|y*z_.png", "café, naïve.png", "</script><!--.png", "-1+2.png", "@SUM(A1).png",
           "$\\foo$.png", "a\\|b`[c](javascript:x).png")
DEFECT = "=HYPERLINK(\"x\")<b>"
# Folder names (a category, a noise mode, a method): no '/', but quotes, markup, '#?%'.
CATEGORY = "w\"<img src=x onerror=alert(1)>'#?%é"
MODE = "é ,'&amp;"
METHOD = "-lof\"<img src=x onerror=alert(2)>"
TITLE = "<script>alert(3)</script> | *x* \\ & [run](javascript:y)"
CONFIG = {"seed": 0, "data": {"name": "</pre><script>alert(4)</script>", "root": "a\"b'<c>",
                              "category": CATEGORY},
          "noise": {"ratio": 0.1, "mode": MODE, "overlap": False, "files": "=cmd|x"},
          "model": {"method": "softpatch"}}
# Every element a report is made of; an injected one (i, iframe, ...) is not among them.
REPORT_TAGS = {"html", "head", "meta", "title", "style", "script", "body", "header", "h1", "h2",
               "h3", "h4", "p", "nav", "a", "main", "section", "table", "thead", "tbody", "tr",
               "th", "td", "b", "small", "code", "details", "summary", "pre", "div", "span",
               "figure", "img", "figcaption", "br", "svg", "rect", "line", "text", "tspan",
               "polyline", "circle", "g"}


class _Parsed(html.parser.HTMLParser):
    """Every element with its attributes, the text, each script's source, the comments."""

    def __init__(self, page):
        super().__init__()
        self.tags, self.text, self.scripts, self.comments = [], [], [], []
        self._in_script = False
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._in_script = True
            self.scripts.append("")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data
        else:
            self.text.append(data)

    def handle_comment(self, data):
        self.comments.append(data)

    def all(self, tag):
        return [a for t, a in self.tags if t == tag]


def _inert(path: str) -> _Parsed:
    """Parses the report at `path` and checks it holds nothing but the report's own markup:
    one script (the load watcher), no comment, no handler attribute, no element of another
    kind; every link a relative URL to a file that is there, or to an id on the page."""
    with open(path, encoding="utf-8") as f:
        page = _Parsed(f.read())
    watcher = pages.WATCH[len("<script>"):-len("</script>")]
    assert page.scripts == [watcher]
    assert not page.comments
    assert {t for t, _ in page.tags} <= REPORT_TAGS
    assert not [name for _, attrs in page.tags for name in attrs if name.startswith("on")]
    ids = {a["id"] for _, a in page.tags if "id" in a}
    base = os.path.dirname(path)
    hrefs = [a["href"] for a in page.all("a")]
    assert hrefs
    for href in hrefs:
        assert not urllib.parse.urlsplit(href).scheme, href
        if href.startswith("#"):
            assert href[1:] in ids, href
        else:
            assert os.path.isfile(os.path.join(base, urllib.parse.unquote(href))), href
    for img in page.all("img"):
        assert img["src"].startswith("data:image/")
    return page


def _words(page: _Parsed) -> str:
    return " ".join(" ".join(page.text).split())


def _hostile(category):
    """The generated test set with names from HOSTILE and the defect DEFECT."""
    samples, scores, maps, masks = category
    named = [dataclasses.replace(s, name=HOSTILE[i] if i < len(HOSTILE) else s.name,
                                 defect=DEFECT if s.label else s.defect)
             for i, s in enumerate(samples)]
    return named, scores, maps, masks


def _md_cells(line: str):
    """The cells of a Markdown table row, as GFM splits it ('\\' escapes the next char)."""
    cells, cell, i = [], "", 1  # after the leading '|'
    while i < len(line):
        if line[i] == "\\":
            cell += line[i:i + 2]
            i += 2
            continue
        if line[i] == "|":
            cells.append(cell.strip())
            cell = ""
        else:
            cell += line[i]
        i += 1
    return cells


def _tables(md: str):
    """The tables of a Markdown text: [[cells of each row]], the delimiter row left out."""
    tables, rows = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            if not line.startswith("|---"):
                rows.append(_md_cells(line))
        elif rows:
            tables.append(rows)
            rows = []
    return tables


# 1. The helpers.

def test_csv_text_cells_are_guarded_and_read_back():
    for name in HOSTILE + ("\tx.png", "\rx.png", "'=x.png", "''+x", "'plain.png", "'", "",
                           "plain.png"):
        cell = text.csv_text_cell(name)
        if name.lstrip("'")[:1] in ("=", "+", "-", "@", "\t", "\r"):
            assert cell == "'" + name
        else:
            assert cell == name
        assert text.csv_text_value(cell) == name
    for number in (-0.5, 3, None):  # not text: as it is
        assert text.csv_text_cell(number) is number


@pytest.mark.parametrize("name", ["a\"b<c>#?.png", "é ,'.png", "100%&x=1;.png",
                                  "javascript:alert(1).png"] + list(HOSTILE))
def test_url_paths_resolve_to_the_file(name):
    url = text.url_path(os.path.join("dir é", name))
    assert urllib.parse.unquote(url) == "dir é/" + name
    assert not urllib.parse.urlsplit(url).scheme and not set(url) & set("\"'<>&#? :")


def test_markdown_cells_read_back():
    for name in HOSTILE + (TITLE, CATEGORY, MODE, "a\\", "\\|"):
        cell = text.md_cell(name)
        assert text.md_plain(cell) == name
        assert not set(cell) & set("<>\n") and len(_md_cells(f"| {cell} |")) == 1
    assert text.md_cell("two\nlines\r\nhere") == "two lines here"
    assert text.md_cell("no_overlap, elpv/mono") == "no_overlap, elpv/mono"  # stays readable


# 2. Markdown tables.

def test_markdown_table_keeps_its_columns(tmp_path):
    per_category = {name: {"image_auroc": 0.5 + i / 100, "image_f1": 0.25}
                    for i, name in enumerate(HOSTILE + ("two\nlines",))}
    report.write_results(str(tmp_path), per_category, CONFIG, TITLE)
    md = (tmp_path / "results.md").read_text()
    assert md.splitlines()[0] == "# " + text.md_cell(TITLE)
    assert pages._title(str(tmp_path), None) == TITLE  # what the report shows
    tables = _tables(md)
    assert len(tables) == 2
    for rows in tables:
        assert all(len(r) == len(rows[0]) == 2 for r in rows)
        names = [text.md_plain(r[0]) for r in rows[1:-1]]
        assert names == list(HOSTILE) + ["two lines"] and rows[-1][0] == "**mean**"
    assert "<" not in md
    stored = json.loads((tmp_path / "metrics.json").read_text())  # JSON: exactly as given
    assert sorted(stored["categories"]) == sorted(per_category)  # write_json sorts keys
    assert stored["config"]["data"]["name"] == CONFIG["data"]["name"]


# 3. CSV files.

def test_scores_csv_guards_text_and_keeps_numbers(tmp_path, category):
    samples, _, _, _ = _hostile(category)
    scores = np.linspace(-0.5, 0.5, len(samples))
    path = str(tmp_path / "scores.csv")
    evaluate.write_scores(path, samples, scores)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    for row, s, v in zip(rows, samples, scores):
        assert row[0] == text.csv_text_cell(s.name) and row[3] == repr(float(v))
        assert row[2] == (f"'{DEFECT}" if s.label else s.defect)
    assert rows[2][0] == "'" + HOSTILE[2] and rows[0][3] == "-0.5" and rows[1][0] == HOSTILE[1]
    back = runs.read_csv(path)  # the package's reader undoes the guard
    assert [(r["name"], r["defect"]) for r in back] == [(s.name, s.defect) for s in samples]


def test_sweep_results_csv_and_md(tmp_path):
    w = str(tmp_path)
    for cat in (CATEGORY, "=1+2"):
        for ratio in (0.0, 0.1):
            sweep_point(w, cat, MODE, ratio, METHOD, 0.5 + ratio)
            sweep_point(w, cat, MODE, ratio, "$\\bar$", -0.25)  # a '$' pair: not mathtext
    rows = sweep.finished_points(w)
    sweep.aggregate(w, rows)
    with open(tmp_path / "results.csv", newline="") as f:
        written = list(csv.DictReader(f))
    assert len(written) == 8
    for r, row in zip(written, rows):
        for k in ("category", "mode", "method"):
            assert r[k] == text.csv_text_cell(row[k])
            assert text.csv_text_value(r[k]) == row[k]
        assert float(r["ratio"]) == row["ratio"] and float(r["image_auroc"]) == row["image_auroc"]
    assert {r["method"] for r in written} == {"'" + METHOD, "$\\bar$"}
    assert {r["image_auroc"] for r in written} >= {"-0.25", "0.5"}  # numbers as they are
    md = (tmp_path / "results.md").read_text()
    assert f"({text.md_cell(MODE)})" in md and "<" not in md
    for rows_ in _tables(md):
        assert all(len(r) == 3 for r in rows_)  # category, and one column per method
        assert {text.md_plain(c) for c in rows_[0][1:]} == {METHOD, "$\\bar$"}
    assert (tmp_path / "auroc_vs_noise.png").is_file()


# 4. report.html.

def _fit_dir(root: str, category) -> list:
    """DIR of a fit run whose names are all hostile: results, assets, scores, noise, audit,
    predictions (maps and overlays on disk) -> the samples."""
    samples, scores, maps, masks = _hostile(category)
    folder = os.path.join(root, "categories", CATEGORY)
    os.makedirs(folder)
    assets.report_assets(folder, samples, scores, maps, masks, 32, 32)
    evaluate.write_scores(os.path.join(folder, "scores.csv"), samples, scores)
    # One injected image is also a test image: found only when scores.csv reads back.
    write_json(os.path.join(folder, "noise.json"), [{"name": HOSTILE[2], "defect": DEFECT},
                                                    {"name": "train/<b>x</b>.png"}])
    write_json(os.path.join(folder, "threshold.json"),
               {"image_threshold": 1.5, "source": "<i>leave_one_out</i>", "false_reject": 0.01})
    with open(os.path.join(folder, f"audit_{CATEGORY}.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "score", "rank", "flagged", "injected"])
        w.writerows([(HOSTILE[5], 0.9, 1, 1, 1), (HOSTILE[1], 0.5, 2, 0, 0)])
    result = {"image_auroc": 0.875, "n_train_clean": 4, "n_noise": 2, "n_test": len(samples),
              "n_test_anomalous": int(sum(s.label for s in samples)), "threshold_image": 1.5,
              "note": "</p><script>alert(5)</script>",
              "image_auroc_per_defect": {DEFECT: 0.9, "<i>d</i>": 0.5},
              "stage_seconds": {"<i>stage</i>": 1.0, "scoring": 2.0}, "seconds": 3.0}
    write_json(os.path.join(folder, "result.json"), result)
    report.write_results(root, {CATEGORY: result}, CONFIG, TITLE)
    target = os.path.join(root, "predictions", CATEGORY)
    os.makedirs(target)
    evaluate.write_scores(os.path.join(target, "scores.csv"), samples, scores)
    predict._write_decisions(target, samples, scores, maps, 1.5, None, "stored",
                             types.SimpleNamespace(resize=32, image_size=32), True)
    return samples


def test_fit_report_shows_hostile_names_as_text(tmp_path, category):
    samples = _fit_dir(str(tmp_path), category)
    page = _inert(write_report(str(tmp_path)))
    words = _words(page)
    for shown in (TITLE, CATEGORY, DEFECT, CONFIG["data"]["name"], CONFIG["data"]["root"],
                  MODE, "<i>leave_one_out</i>", "</p><script>alert(5)</script>", "<i>d</i>",
                  "<i>stage</i>", "train/<b>x</b>.png", HOSTILE[5]):
        assert " ".join(shown.split()) in words, shown
    assert page.all("section") and [a for t, a in page.tags if a.get("id") == "config"]
    # The sample names in the gallery (alt text) and the predictions: each whole, as given.
    names = {s.name for s in samples}
    alts = [img["alt"] for img in page.all("img")]
    assert set(alts) <= names and set(HOSTILE) <= set(alts)
    # scores.csv and predictions.csv read back: the injected '=cmd...' is a test image
    # (overlap 1) and every prediction finds its overlay on disk by its name.
    assert f"{CATEGORY} 4 2 1" in words and words.count("also a test image") == 1
    overlays = [i for i in page.all("img") if i["src"].startswith("data:image/png")]
    assert len(overlays) == len(samples)
    with open(tmp_path / "predictions" / CATEGORY / "predictions.csv", newline="") as f:
        written = list(csv.DictReader(f))
    assert [r["name"] for r in written] == [text.csv_text_cell(s.name) for s in samples]
    assert written[2]["name"].startswith("'=") and written[0]["score"] == repr(
        json.loads((tmp_path / "predictions" / CATEGORY / "predictions.json").read_text())
        ["images"][0]["score"])
    gallery = json.loads((tmp_path / "categories" / CATEGORY / "gallery.json").read_text())
    assert {g["name"] for g in gallery["images"].values()} <= names  # JSON: as given


def test_sweep_report_links_hostile_folders(tmp_path, category):
    w = str(tmp_path)
    rels = [sweep_point(w, cat, MODE, ratio, METHOD, 0.5 + ratio)
            for cat in (CATEGORY, "=1+2") for ratio in (0.0, 0.1)]
    samples, scores, maps, masks = _hostile(category)
    assets.report_assets(os.path.join(w, rels[0]), samples, scores, maps, masks, 32, 32)
    evaluate.write_scores(os.path.join(w, rels[0], "scores.csv"), samples, scores)
    sweep.aggregate(w, sweep.finished_points(w))
    page = _inert(write_report(w))
    points = [a["href"] for a in page.all("a") if a.get("class") == "point"]
    assert sorted(urllib.parse.unquote(h) for h in points) == sorted(
        os.path.join(r, "report.html") for r in rels)
    words = _words(page)
    assert f"{CATEGORY}: image AUROC ({MODE})" in words  # the charts' SVG titles
    assert f"{METHOD}, noise 0.1: image AUROC 0.6000 (click for its report)" in words
    for rel in rels:
        point = _inert(os.path.join(w, rel, "report.html"))  # back link, files, gallery
        assert CATEGORY in _words(point) or "=1+2" in _words(point)
