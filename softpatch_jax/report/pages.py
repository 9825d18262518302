"""The report for people: DIR/report.html, one self-contained file (styles inline, charts as
inline SVG, images as data URIs, no network, no framework; a few lines of script only record
load errors), built from the files a run leaves on disk, so it can be rebuilt at any time.

`write_report(workdir)` writes DIR/report.html for a fit run (categories/, plus predictions/
when there are some), a sweep (points/; also one report.html per point, which the sweep's charts
and table link to) or a folder holding only predictions/. Every file is read through `runs` and
may be absent; the charts are drawn by `charts`; this module lays out sections and pages.
"""
import datetime
import json
import math
import os
from typing import Dict, Optional, Sequence

import numpy as np

from softpatch_jax.files import atomic_path
from softpatch_jax.io import report
from softpatch_jax.io.assets import GALLERY_GROUPS
from softpatch_jax.io.text import html_text, url_path
from softpatch_jax.pipeline.sweep import POINT_FIELDS, checked_points
from softpatch_jax.report import runs, tables
from softpatch_jax.report.charts import (ANOMALY_COLOUR, NORMAL_COLOUR, PALETTE, secs,
                                         svg_histogram, svg_lines, svg_ranks, svg_stage_bars)
from softpatch_jax.report.runs import config_field, number
# result.json's `stage_seconds` are shown in run order (write_json sorts the keys); names not
# listed follow, in the stored order.
from softpatch_jax.timing import STAGES

REPORT_FILE = "report.html"

# Metrics in the order and with the names the report shows them; absent ones are left out.
QUALITY = (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO"),
           ("image_ap", "image AP"), ("pixel_ap", "pixel AP"),
           ("image_f1_max", "image F1-max"), ("pixel_f1_max", "pixel F1-max"))
DECISION = (("image_precision", "image precision"), ("image_recall", "image recall"),
            ("image_f1", "image F1"), ("image_false_reject", "false reject"),
            ("image_false_accept", "false accept"), ("pixel_precision", "pixel precision"),
            ("pixel_recall", "pixel recall"), ("pixel_f1", "pixel F1"),
            ("pixel_iou", "pixel IoU"))
AUDIT = (("audit_auroc", "audit AUROC"), ("audit_ap", "audit AP"),
         ("audit_precision_at_n", "precision@n"), ("audit_found_at_n", "found in top n"),
         ("audit_flagged", "flagged"), ("contamination_images", "defective images (est.)"),
         ("contamination_patches", "defective patches (est.)"))
# The data summary's columns (`_data_row`); overlap: injected images that are also test images.
DATA_HEADER = ("category", "train (clean)", "injected", "overlap", "test normal",
               "test anomalous")
# Config fields shown up front (the whole config is one click further).
KEY_FIELDS = ("seed", "data.name", "data.root", "data.category", "data.resize",
              "data.image_size", "data.max_train", "data.max_test", "noise.ratio", "noise.mode",
              "noise.overlap", "noise.files", "model.method", "denoise.discriminator",
              "backbone.name", "backbone.layers", "denoise.ratio", "bank.coreset_ratio",
              "threshold.false_reject", "threshold.source")
# The fields a sweep's points differ in: its axes, in the sweep page's title, not its config.
SWEPT_FIELDS = POINT_FIELDS
# Wall time no stage accounts for is shown as a bar of its own above this (seconds).
UNACCOUNTED = 0.5


# ---------------------------------------------------------------------------------------------
# HTML pieces

esc = html_text  # text and quoted attribute values alike


def _fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return report.fmt(v)
    return esc(str(v))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """header: plain text; rows: cells as HTML."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return (f'<table class="{cls}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>")


def _metric_table(per_row: Dict[str, dict], columns, links: Dict[str, str] = None,
                  corner: str = "category", mean_row: bool = True) -> str:
    """One row per key of per_row (its name linked through `links`), the columns of
    `columns` ((key, label)) that any row has, and a mean row."""
    cols = [(k, label) for k, label in columns
            if any(report.present(r.get(k)) for r in per_row.values())]
    if not cols:
        return ""
    links = links or {}
    rows = []
    for name, r in per_row.items():
        cell = f'<a href="{esc(links[name])}">{esc(name)}</a>' if name in links else esc(name)
        rows.append([cell] + [_fmt(r.get(k)) for k, _ in cols])
    if mean_row and len(per_row) > 1:
        rows.append(["<b>mean</b>"] + [f"<b>{_fmt(report.mean(r.get(k) for r in per_row.values()))}"
                                       "</b>" for k, _ in cols])
    return _table([corner] + [label for _, label in cols], rows, "metrics")


# ---------------------------------------------------------------------------------------------
# Sections

def _config_section(config: Optional[dict]) -> str:
    if not config:
        return ""
    rows = [[f"<code>{esc(f)}</code>", _fmt(config_field(config, f))] for f in KEY_FIELDS
            if config_field(config, f) not in (None, "")]
    full = esc(json.dumps(config, indent=2, sort_keys=True))
    return ('<section id="config"><h2>Config</h2>' + _table(["field", "value"], rows, "kv")
            + f"<details><summary>the whole resolved config</summary><pre>{full}</pre>"
            "</details></section>")


def _data_row(name: str, folder: str, result: dict, link: str = "") -> list:
    """One data-summary row: counts, and the injected files (which are also test images)."""
    injected = runs.injected(folder)
    scored = runs.scores(folder)
    test_names = set(scored[0]) if scored else set()
    overlap = sum(1 for r in injected if r.get("name") in test_names)
    cell = f'<a href="{esc(link)}">{esc(name)}</a>' if link else esc(name)
    return [cell, _fmt(result.get("n_train_clean")), _fmt(result.get("n_noise", len(injected))),
            str(overlap), _fmt(_n_normal(result)), _fmt(result.get("n_test_anomalous"))]


def _n_normal(result: dict):
    n, a = result.get("n_test"), result.get("n_test_anomalous")
    return n - a if isinstance(n, int) and isinstance(a, int) else None


def _injected_list(folder: str) -> str:
    injected = runs.injected(folder)
    if not injected:
        return "<p>No noise was injected into the training set.</p>"
    scored = runs.scores(folder)
    test_names = set(scored[0]) if scored else set()
    rows = []
    for r in injected[:500]:
        aug = ("" if "rotation_deg" not in r else
               f"rotated {r['rotation_deg']:.2f} deg, shifted {r.get('shift_x', 0):.3f}, "
               f"{r.get('shift_y', 0):.3f}")
        also = ('<span class="tag bad">also a test image</span>' if r.get("name") in test_names
                else "")
        rows.append([esc(r.get("name", "")), esc(r.get("defect", "")), esc(aug), also])
    more = f"<p>... and {len(injected) - 500} more (noise.json)</p>" if len(injected) > 500 else ""
    return (f"<details><summary>{len(injected)} injected training images (noise.json)</summary>"
            + _table(["file", "defect", "augmentation", "overlap"], rows) + more + "</details>")


def _operating_point(scored, threshold: Optional[float]) -> Optional[dict]:
    """The image decision at `threshold` on the test set: fpr, tpr, precision."""
    if scored is None or threshold is None:
        return None
    _, labels, _, scores = scored
    pos, neg = scores[labels == 1], scores[labels == 0]
    if not pos.size or not neg.size:
        return None
    tp, fp = int(np.sum(pos >= threshold)), int(np.sum(neg >= threshold))
    return {"fpr": fp / neg.size, "tpr": tp / pos.size,
            "precision": tp / (tp + fp) if tp + fp else None}


def _curve_charts(folder: str, result: dict) -> str:
    found = runs.curves(folder)
    scored = runs.scores(folder)
    threshold = runs.threshold(folder, result)
    op = _operating_point(scored, threshold)
    charts = []
    for level in ("image", "pixel"):
        c = found.get(level)
        if not c:
            continue
        auc = result.get(f"{level}_auroc")
        ap = result.get(f"{level}_ap")
        roc_label = f"AUROC {auc:.4f}" if report.present(auc) else "ROC"
        pr_label = f"AP {ap:.4f}" if report.present(ap) else "PR"
        marks_roc, marks_pr = [], []
        if level == "image" and op:
            label = f"threshold {threshold:.6g}: FPR {op['fpr']:.3f}, TPR {op['tpr']:.3f}"
            marks_roc.append({"x": op["fpr"], "y": op["tpr"], "label": label})
            if op["precision"] is not None:
                marks_pr.append({"x": op["tpr"], "y": op["precision"], "label": label})
        charts.append(svg_lines(
            [{"label": roc_label, "x": c["roc"]["fpr"], "y": c["roc"]["tpr"],
              "colour": PALETTE[0]}], "false positive rate", "true positive rate",
            f"{level} ROC ({_count(c['n_pos'])} anomalous / {_count(c['n_neg'])} normal)",
            diagonal=True, marks=marks_roc))
        charts.append(svg_lines(
            [{"label": pr_label, "x": c["pr"]["recall"], "y": c["pr"]["precision"],
              "colour": PALETTE[1]}], "recall", "precision", f"{level} precision-recall",
            marks=marks_pr, legend="bottom left"))
    if scored is not None:
        _, labels, _, scores = scored
        groups = [("normal", scores[labels == 0], NORMAL_COLOUR)]
        if (labels == 1).any():
            groups.append(("anomalous", scores[labels == 1], ANOMALY_COLOUR))
        charts.append(svg_histogram(groups, "test image scores", threshold=threshold))
    return '<div class="charts">' + "".join(charts) + "</div>" if charts else ""


def _count(n: int) -> str:
    """A count for a chart title: 4,321; 135k; 3.83M."""
    if n >= 10**6:
        return f"{n / 1e6:.3g}M"
    return f"{n / 1e3:.3g}k" if n >= 10**4 else f"{n:,}"


def _gallery(folder: str, threshold: Optional[float] = None) -> str:
    """The gallery groups; with a threshold each image says whether it would be rejected
    (score >= threshold) or accepted."""
    g = runs.gallery(folder)
    if not g:
        return ""
    lo, hi = g.get("scale", [0, 0])
    contour_note = " and the ground-truth contour in white" if g.get("masks") else ""
    out = ['<div class="scale">left: the test image; right: its anomaly map (colour scale '
           f'<span class="jet"></span> {lo:.4g} .. {hi:.4g}, shared by all){contour_note}'
           "</div>"]
    for key, title in GALLERY_GROUPS:
        ids = g.get("groups", {}).get(key) or []
        if not ids:
            continue
        figs = []
        for i in ids:
            item = g["images"].get(i, {})
            uri = runs.image_uri(os.path.join(folder, item.get("file", "")))
            if uri is None:
                continue
            tag = ('<span class="tag bad">anomalous</span>' if item.get("label") else
                   '<span class="tag ok">normal</span>')
            if threshold is not None:
                tag += (' <span class="tag">rejected</span>' if item.get("score", 0) >= threshold
                        else ' <span class="tag">accepted</span>')
            figs.append(f'<figure><img src="{uri}" alt="{esc(item.get("name", ""))}">'
                        f'<figcaption>{tag} <b>{item.get("score", 0):.4g}</b> '
                        f"{esc(item.get('defect', ''))}<br><small>"
                        f"{esc(item.get('name', ''))}</small></figcaption></figure>")
        out.append(f'<h4>{esc(title)}</h4><div class="gallery">{"".join(figs)}</div>')
    return '<div class="galleries"><h3>Gallery</h3>' + "".join(out) + "</div>"


def _audit(folder: str, name: str, result: dict) -> str:
    rows = runs.audit(folder, name)
    if not rows:
        return ""
    scores = [number(r.get("score")) or 0.0 for r in rows]
    injected = [r.get("injected") == "1" for r in rows]
    flagged = [r.get("flagged") == "1" for r in rows]
    n_inj = sum(injected)
    summary = f"{len(rows)} training images ranked by how likely each is defective"
    if "injected" in rows[0]:
        found = sum(injected[:n_inj])
        summary += (f"; {found} of the {n_inj} injected ones are among the top {n_inj}"
                    if n_inj else "; none was injected")
    summary += f"; {sum(flagged)} flagged."
    figures = " ".join(f"{label} <b>{_fmt(result[k])}</b>" for k, label in AUDIT
                       if report.present(result.get(k)))
    top = [[esc(r.get("rank")), esc(r.get("file", "")), _fmt(number(r.get("score"))),
            '<span class="tag">flagged</span>' if f else "",
            '<span class="tag bad">injected</span>' if i else ""]
           for r, f, i in list(zip(rows, flagged, injected))[:20]]
    return ('<div class="audit"><h3>Training-set audit</h3>'
            f"<p>{esc(summary)} {figures}</p>"
            + svg_ranks(scores, injected, flagged, "audit score by rank")
            + "<details><summary>the 20 top-ranked training images</summary>"
            + _table(["rank", "file", "score", "flagged", "injected"], top) + "</details></div>")


def _stage_chart(result: dict) -> str:
    """result.json's `stage_seconds` as bars (the longest stage in the anomaly colour; time no
    stage accounts for, when over half a second, as a grey bar of its own) and a line with the
    total and the part spent compiling (which overlaps the stages); "" without stages."""
    stages = result.get("stage_seconds")
    if not isinstance(stages, dict):
        return ""
    found = [(str(k), v) for k, v in stages.items()
             if not isinstance(v, bool) and number(v) is not None]
    found.sort(key=lambda kv: STAGES.index(kv[0]) if kv[0] in STAGES else len(STAGES))
    if not found:
        return ""
    longest = max(range(len(found)), key=lambda i: number(found[i][1]))
    bars = [(k, number(v), ANOMALY_COLOUR if i == longest else PALETTE[0])
            for i, (k, v) in enumerate(found)]
    summed = sum(max(v, 0.0) for _, v, _ in bars)
    total = None if isinstance(result.get("seconds"), bool) else number(result.get("seconds"))
    gap = round(total - summed, 2) if total is not None else 0.0
    if gap > UNACCOUNTED:
        bars.append(("other (unaccounted)", gap, "#999999"))
    line = (f"total {secs(total)} s" if total is not None
            else f"stages sum to {secs(summed)} s")
    compiling = result.get("seconds_compile")
    if not isinstance(compiling, bool) and number(compiling) is not None:
        line += f"; of which compiling {secs(number(compiling))} s"
    return ('<div class="stages"><h3>Time</h3>'
            + svg_stage_bars(bars, "seconds by stage") + f'<p class="scale">{esc(line)}</p></div>')


def _category_section(name: str, folder: str, result: dict, rel: str, anchor: str) -> str:
    """One category (or sweep point): counts, metrics, curves, histogram, gallery, audit,
    time by stage."""
    n_test, n_anom = result.get("n_test"), result.get("n_test_anomalous")
    line = (f"{_fmt(result.get('n_train_clean'))} clean + {_fmt(result.get('n_noise'))} injected "
            f"training images; {_fmt(n_test)} test images ({_fmt(n_anom)} anomalous).")
    chips = " ".join(f'<span class="chip">{label} <b>{_fmt(result[k])}</b></span>'
                     for k, label in QUALITY if report.present(result.get(k)))
    decisions = ""
    threshold = runs.threshold(folder, result)
    if threshold is not None:
        figs = " ".join(f"{label} <b>{_fmt(result[k])}</b>" for k, label in DECISION
                        if report.present(result.get(k)))
        stored = runs.stored_threshold(folder)
        how = (f" (from the training images, {esc(str(stored['source']))}, false reject "
               f"{_fmt(stored.get('false_reject'))})" if stored.get("source") else "")
        scored = runs.scores(folder)
        op = _operating_point(scored, threshold)
        counts = ""
        if op:
            _, labels, _, _ = scored
            n_pos, n_neg = int(labels.sum()), int((labels == 0).sum())
            counts = (f" It rejects {round(op['tpr'] * n_pos)} of the {n_pos} anomalous test "
                      f"images and {round(op['fpr'] * n_neg)} of the {n_neg} normal ones.")
        decisions = f"<p>Decision threshold {threshold:.6g}{how}.{counts} {figs}</p>"
    per_defect = result.get("image_auroc_per_defect") or {}
    defects = (_table(["defect", "image AUROC"], [[esc(d), _fmt(v)] for d, v in
                                                   per_defect.items()], "small")
               if len(per_defect) > 1 else "")
    note = f'<p class="note">{esc(result["note"])}</p>' if result.get("note") else ""
    files = " ".join(f'<a href="{esc(url_path(os.path.join(rel, f)))}">{esc(f)}</a>' for f in
                     runs.present(folder, ("result.json", "scores.csv", "noise.txt",
                                           "threshold.json", f"audit_{name}.csv", "overlay.png")))
    return (f'<section id="{anchor}" class="category"><h2>{esc(name)}</h2><p>{line}</p>'
            f"<p>{chips}</p>{decisions}{note}{_curve_charts(folder, result)}{defects}"
            f"{_gallery(folder, threshold)}{_audit(folder, name, result)}"
            f"{_stage_chart(result)}"
            f'<p class="files">files: {files}</p></section>')


def _predictions_section(workdir: str) -> str:
    """Per predicted category: the images scored, highest first, with their maps."""
    parts = []
    for cat, folder, table_file, stored in runs.predictions(workdir):
        rows = sorted(stored, key=lambda r: -(number(r.get("score")) or -math.inf))
        cols = [c for c in (rows[0].keys() if rows else []) if c not in ("label", "defect")]
        verdicts = {}
        for r in rows:
            if "verdict" in r:
                verdicts[r["verdict"]] = verdicts.get(r["verdict"], 0) + 1
        summary = f"{len(rows)} images scored"
        if verdicts:
            summary += ": " + ", ".join(f"{v} {esc(k)}" for k, v in sorted(verdicts.items()))
        figs = []
        for r in rows[:12]:
            uri = runs.prediction_image(folder, r.get("name", ""))
            if uri:
                verdict = f' <span class="tag">{esc(r["verdict"])}</span>' if "verdict" in r else ""
                figs.append(f'<figure><img src="{uri}" alt="{esc(r.get("name", ""))}">'
                            f'<figcaption><b>{_fmt(number(r.get("score")))}</b>{verdict}<br>'
                            f"<small>{esc(r.get('name', ''))}</small></figcaption></figure>")
        body = [[esc(str(r.get(c, ""))) for c in cols] for r in rows[:50]]
        parts.append(f'<h3>{esc(cat)}</h3><p>{summary} (<a href="'
                     f'{esc(url_path(os.path.join("predictions", cat, table_file)))}">'
                     f'{table_file}</a>'
                     f'{"; the 50 highest shown" if len(rows) > 50 else ""}).</p>'
                     + (f'<div class="gallery">{"".join(figs)}</div>' if figs else "")
                     + _table(cols, body))
    if not parts:
        return ""
    return '<section id="predictions"><h2>Predictions</h2>' + "".join(parts) + "</section>"


# ---------------------------------------------------------------------------------------------
# Pages

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;
background:#fafafa}
header{background:#1f2937;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#cbd5e1}nav{padding:6px 24px;background:#e5e7eb}
nav a{margin-right:14px}main{padding:8px 24px 40px;max-width:1500px}
section{background:#fff;border:1px solid #e5e7eb;border-radius:6px;padding:10px 16px;
margin:14px 0}h2{margin:4px 0 8px;font-size:18px}h3{font-size:15px;margin:14px 0 6px}
h4{font-size:13px;margin:10px 0 4px;color:#444}
table{border-collapse:collapse;margin:6px 0}th,td{border:1px solid #ddd;padding:3px 8px;
text-align:right}th{background:#f3f4f6}td:first-child,th:first-child{text-align:left}
table.kv td{text-align:left}.charts{display:flex;flex-wrap:wrap;gap:8px}
svg.chart{background:#fff;border:1px solid #eee}svg .frame{fill:none;stroke:#888}
svg .grid{stroke:#eee}svg .t{font-size:11px;font-weight:600}
svg .yt{font-size:10px;text-anchor:end}svg .xt{font-size:10px;text-anchor:middle}
svg .xl{font-size:11px;text-anchor:middle}svg .lg{font-size:10px}
svg .chance{stroke:#bbb;stroke-dasharray:4 3}svg .threshold{stroke:#111;stroke-width:1.5;
stroke-dasharray:5 3}svg .mark{fill:none;stroke:#111;stroke-width:2}
.gallery{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0;width:300px}
figure img{width:300px;border:1px solid #ddd;display:block}figcaption{font-size:12px}
.tag{display:inline-block;padding:0 5px;border-radius:3px;background:#e5e7eb;font-size:11px}
.tag.bad{background:#fde2d4;color:#8a2c0d}.tag.ok{background:#d6ebf7;color:#0b4a6f}
.chip{display:inline-block;margin:2px 6px 2px 0;padding:2px 8px;border-radius:10px;
background:#eef2ff}.note{color:#8a2c0d}.files{font-size:12px;color:#555}
.jet{display:inline-block;width:120px;height:10px;vertical-align:middle;background:
linear-gradient(90deg,#00007f,#0000ff 12%,#00ffff 37%,#ffff00 63%,#ff0000 88%,#7f0000)}
.scale{font-size:12px;color:#444}pre{font-size:12px;background:#f6f8fa;padding:8px;
overflow:auto;max-height:420px}small{color:#666}
"""

# Records script errors, failed loads and console errors where a headless browser's dumped DOM
# shows them (data-errors on <html>; data-broken-images and data-ready on <body> after load).
WATCH = """<script>
(function(){var errs=[],root=document.documentElement;
function note(m){errs.push(String(m));root.setAttribute('data-errors',String(errs.length));
root.setAttribute('data-error-text',errs.join(' | ').slice(0,2000));}
root.setAttribute('data-errors','0');
window.addEventListener('error',function(e){var t=e.target;note(e.message||(t&&(t.src||t.href))
||'load error');},true);
window.addEventListener('unhandledrejection',function(e){note(e.reason);});
var ce=console.error;console.error=function(){note([].slice.call(arguments).join(' '));
return ce.apply(console,arguments);};
window.addEventListener('load',function(){var b=0,im=document.images;
for(var i=0;i<im.length;i++){if(!im[i].complete||im[i].naturalWidth===0){b++;}}
document.body.setAttribute('data-images',String(im.length));
document.body.setAttribute('data-broken-images',String(b));
document.body.setAttribute('data-ready','1');});})();
</script>"""


def _page(title: str, subtitle: str, nav: Sequence[tuple], body: Sequence[str]) -> str:
    links = "".join(f'<a href="{esc(href)}">{esc(label)}</a>' for href, label in nav)
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{STYLE}</style>{WATCH}</head><body>"
            f"<header><h1>{esc(title)}</h1><p>{subtitle}</p></header>"
            + (f"<nav>{links}</nav>" if links else "")
            + "<main>" + "".join(b for b in body if b) + "</main></body></html>\n")


def _stamp(workdir: str) -> str:
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return f"written {when} from {esc(os.path.abspath(workdir))}"


def _write(path: str, text: str) -> str:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    return os.path.abspath(path)


def _anchor(name: str) -> str:
    return "cat-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _title(workdir: str, config: Optional[dict]) -> str:
    """results.md's heading, else the data set and method of the config, else the folder."""
    title = runs.results_title(workdir)
    if title is not None:
        return title
    if config:
        return f"{config_field(config, 'data.name')}: {config_field(config, 'model.method')}"
    return os.path.basename(os.path.abspath(workdir))


def _links(workdir: str, names: Sequence[str]) -> str:
    found = runs.present(workdir, names)
    return ('<p class="files">files: ' + " ".join(f'<a href="{esc(url_path(n))}">{esc(n)}</a>'
                                                   for n in found) + "</p>") if found else ""


def fit_report(workdir: str) -> str:
    """DIR/report.html of a fit run (and its predictions) -> the path."""
    config, results = runs.fit_run(workdir)
    folders = {c: runs.category_folder(workdir, c) for c in results}
    anchors = {c: "#" + _anchor(c) for c in results}
    summary = ['<section id="summary"><h2>Results</h2>']
    if results:
        summary.append(_metric_table(results, QUALITY, anchors))
        decisions = _metric_table(results, DECISION, anchors)
        if decisions:
            summary.append("<h3>At the decision threshold (set from the training images)</h3>"
                           + decisions)
        audit = _metric_table(results, AUDIT, anchors)
        if audit:
            summary.append("<h3>Training-set audit (ranking the injected images)</h3>" + audit)
    else:
        summary.append("<p>No finished category yet.</p>")
    summary.append(_links(workdir, ("metrics.json", "results.md", "run.log")) + "</section>")
    data_rows = [_data_row(c, folders[c], r, anchors[c]) for c, r in results.items()]
    data = ""
    if data_rows:
        mode = _noise_mode(config)
        data = ('<section id="data"><h2>Data</h2>'
                f"<p>Noise: ratio {_fmt(config_field(config or {}, 'noise.ratio'))}, mode "
                f"{esc(mode)}. Overlap: injected images that are also test images.</p>"
                + _table(DATA_HEADER, data_rows)
                + "".join(f"<h4>{esc(c)}</h4>{_injected_list(folders[c])}" for c in results)
                + "</section>")
    sections = [_category_section(c, folders[c], r, os.path.join("categories", c),
                                  _anchor(c)) for c, r in results.items()]
    predictions = _predictions_section(workdir)
    nav = ([("#summary", "results")] + [(anchors[c], c) for c in results]
           + ([("#predictions", "predictions")] if predictions else [])
           + [("#data", "data"), ("#config", "config")])
    page = _page(_title(workdir, config), _stamp(workdir), nav,
                 summary + sections + [predictions, data, _config_section(config)])
    return _write(os.path.join(workdir, REPORT_FILE), page)


def _noise_mode(config: Optional[dict]) -> str:
    from softpatch_jax.data import noise

    mode, overlap = (config_field(config or {}, f"noise.{f}") for f in ("mode", "overlap"))
    try:
        return noise.resolve_mode(mode or "", bool(overlap))
    except ValueError:
        return str(mode)


def point_report(workdir: str, rel: str, result: dict) -> str:
    """DIR/<rel>/report.html of one sweep point -> the path."""
    folder = os.path.join(workdir, rel)
    name = str(result.get("category", ""))
    back = "/".join([".."] * len(rel.split(os.sep))) + "/" + REPORT_FILE
    title = (f"{name}: {result.get('method')}, noise {_plain(result.get('ratio'))} "
             f"({result.get('mode')})")
    section = _category_section(name, folder, result, ".", _anchor(name))
    data = ('<section id="data"><h2>Data</h2>'
            + _table(DATA_HEADER, [_data_row(name, folder, result)]) + _injected_list(folder)
            + "</section>")
    page = _page(title, _stamp(folder), [(back, "back to the sweep")],
                 [section, data, _config_section(result.get("config"))])
    return _write(os.path.join(folder, REPORT_FILE), page)


def _seconds(v) -> str:
    return f"{v:.1f}" if isinstance(v, (int, float)) else "-"


def _plain(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _axis_order(v: str):
    value = number(v)
    return (0, value, "") if value is not None else (1, 0.0, v)


def sweep_report(workdir: str) -> str:
    """DIR/report.html of a sweep and one report.html per point -> the path."""
    pts = runs.sweep_points(workdir)
    for rel, result in pts:
        point_report(workdir, rel, result)
    link = {rel: url_path(os.path.join(rel, REPORT_FILE)) for rel, _ in pts}
    metrics = [(k, label) for k, label in QUALITY[:3]
               if any(report.present(r.get(k)) for _, r in pts)]
    charts = []
    for category in sorted({str(r.get("category")) for _, r in pts}):
        for mode in sorted({str(r.get("mode")) for _, r in pts}):
            sub = [(rel, r) for rel, r in pts if str(r.get("category")) == category
                   and str(r.get("mode")) == mode]
            if not sub:
                continue
            ratios = sorted({number(r.get("ratio")) or 0.0 for _, r in sub})
            x_range = (ratios[0], ratios[-1]) if ratios[-1] > ratios[0] else (
                ratios[0] - 0.05, ratios[0] + 0.05)
            for key, label in metrics:
                series = []
                for k, method in enumerate(sorted({str(r.get("method")) for _, r in sub})):
                    line = sorted((number(r.get("ratio")) or 0.0, r.get(key), rel)
                                  for rel, r in sub if str(r.get("method")) == method
                                  and report.present(r.get(key)))
                    if line:
                        series.append({
                            "label": method, "x": [p[0] for p in line],
                            "y": [p[1] for p in line], "colour": PALETTE[k % len(PALETTE)],
                            "points": True, "links": [link[p[2]] for p in line],
                            "tips": [f"{method}, noise {p[0]:g}: {label} {p[1]:.4f} "
                                     "(click for its report)" for p in line]})
                if series:
                    charts.append(svg_lines(series, "noise ratio", label,
                                            f"{category}: {label} ({mode})", x_range=x_range,
                                            ticks_x=ratios, legend="bottom left", width=360,
                                            height=280))
    cols = [k for k, _ in QUALITY if any(report.present(r.get(k)) for _, r in pts)]
    labels = dict(QUALITY)
    rows = [[esc(str(r.get("category"))), esc(str(r.get("mode"))), esc(_plain(r.get("ratio"))),
             esc(str(r.get("method")))] + [_fmt(r.get(k)) for k in cols]
            + [_seconds(r.get("seconds")), f'<a href="{esc(link[rel])}">report</a>']
            for rel, r in pts]
    table = _table(["category", "mode", "ratio", "method"] + [labels[k] for k in cols]
                   + ["seconds", "point"], rows)
    means = ""
    if len({r.get("category") for _, r in pts}) > 1:
        cells = {}
        for _, r in pts:
            key = f"{r.get('mode')}, noise {r.get('ratio')}, {r.get('method')}"
            cells.setdefault(key, []).append(r)
        mean_rows = {k: {c: report.mean(r.get(c) for r in rs) for c in cols}
                     for k, rs in sorted(cells.items())}
        means = ("<h3>Mean over categories</h3>"
                 + _metric_table(mean_rows, [(c, labels[c]) for c in cols], corner="setting",
                                 mean_row=False))
    checked = checked_points(workdir, check_data=False)  # the files alone: rebuildable anywhere
    paper = "".join(tables.html(t) for t in tables.paper_tables(checked.fresh, checked.stale))
    paper = ('<section id="paper"><h2>Paper tables</h2><p>The SoftPatch paper\'s layout: '
             "Average over the categories and Gap (each method's average minus its noise-free "
             "one); the best of each row within a setting in bold; stale points (another "
             "results version or base config) are not shown. <code>python -m experiments.table"
             "</code> writes them as Markdown, CSV and LaTeX.</p>" + paper + "</section>"
             ) if paper else ""
    # The fields the points differ in are the sweep's axes, in the title; the rest is shared.
    config = {k: v for k, v in (pts[0][1].get("config") or {}).items()
              if k not in SWEPT_FIELDS} if pts else None
    axes = "; ".join(", ".join(sorted({_plain(r.get(k)) for _, r in pts}, key=_axis_order))
                     for k in ("category", "mode", "ratio", "method"))
    title = (f"Sweep: {config_field(config or {}, 'data.name')} {axes} ({len(pts)} points)"
             if pts else "Sweep: no finished point yet")
    body = ['<section id="curves"><h2>Metrics against noise</h2><p>One line per method; '
            "each point links to its own report.</p>"
            + '<div class="charts">' + "".join(charts) + "</div></section>",
            '<section id="table"><h2>Results</h2>' + table + means
            + _links(workdir, ("results.csv", "results.md", "metrics.json",
                               "auroc_vs_noise.png", "run.log", "table.md", "table.csv",
                               "table.tex")) + "</section>",
            paper, _config_section(config)]
    nav = [("#curves", "curves"), ("#table", "results")] + (
        [("#paper", "paper tables")] if paper else []) + [("#config", "config")]
    page = _page(title, _stamp(workdir), nav, body)
    return _write(os.path.join(workdir, REPORT_FILE), page)


def write_report(workdir: str) -> str:
    """Writes DIR/report.html from what is in `workdir`: a sweep (points/), a fit run
    (metrics.json, categories/; with its predictions/) or predictions alone -> its path."""
    if runs.is_sweep(workdir):
        return sweep_report(workdir)
    return fit_report(workdir)
