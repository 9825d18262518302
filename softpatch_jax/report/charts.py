"""The report's charts, drawn as inline SVG (no script, no library): line charts (ROC, PR,
metrics against noise), overlaid histograms, training images in rank order and horizontal bars
(seconds by stage). Pure drawing: data in, SVG text out; text is escaped here."""
from typing import Optional, Sequence

import numpy as np

from softpatch_jax.io.text import html_text as esc

# Colour-blind-safe (Okabe-Ito) line colours.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
           "#F0E442")
NORMAL_COLOUR, ANOMALY_COLOUR = "#0072B2", "#D55E00"


def _svg_frame(x_range, y_range, x_label, y_label, title, width, height, ticks_x=None,
               key: str = ""):
    """-> (opening SVG with axes, grid and labels, px, py): px/py map data to SVG coordinates;
    `key`: SVG text (tspans) after the title."""
    left, right, top, bottom = 46, 12, 24, 38
    (x0, x1), (y0, y1) = x_range, y_range
    w, h = width - left - right, height - top - bottom

    def px(x):
        return left + (x - x0) / (x1 - x0) * w

    def py(y):
        return top + h - (y - y0) / (y1 - y0) * h

    out = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" role="img">',
           f"<title>{esc(title)}</title>",
           f'<text x="{left}" y="15" class="t">{esc(title)}{key}</text>',
           f'<rect x="{left}" y="{top}" width="{w}" height="{h}" class="frame"/>']
    for k in range(5):
        yv = y0 + (y1 - y0) * k / 4
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{py(yv):.1f}" y2="{py(yv):.1f}" '
                   f'class="grid"/><text x="{left - 4}" y="{py(yv) + 3:.1f}" class="yt">'
                   f"{_tick(yv)}</text>")
    for xv in (ticks_x if ticks_x is not None else [x0 + (x1 - x0) * k / 4 for k in range(5)]):
        out.append(f'<line y1="{top}" y2="{top + h}" x1="{px(xv):.1f}" x2="{px(xv):.1f}" '
                   f'class="grid"/><text y="{top + h + 13}" x="{px(xv):.1f}" class="xt">'
                   f"{_tick(xv)}</text>")
    out.append(f'<text x="{left + w / 2:.1f}" y="{height - 6}" class="xl">{esc(x_label)}</text>')
    out.append(f'<text transform="translate(11 {top + h / 2:.1f}) rotate(-90)" class="xl">'
               f"{esc(y_label)}</text>")
    return out, px, py


def _tick(v: float) -> str:
    if abs(v) >= 1e6:
        return f"{v / 1e6:.3g}M"
    return f"{v / 1e3:.3g}k" if abs(v) >= 1e3 else f"{v:.3g}"


def svg_lines(series: Sequence[dict], x_label: str, y_label: str, title: str,
              x_range=(0.0, 1.0), y_range=(0.0, 1.0), diagonal: bool = False,
              marks: Sequence[dict] = (), ticks_x=None, legend: str = "bottom right",
              width: int = 330, height: int = 260) -> str:
    """A line chart. series: dicts with label, x, y, colour, and optional `points` (draw
    markers), `links` (per point: an href or None) and `tips` (per point: hover text);
    marks: operating points {x, y, label}; legend: 'bottom right' or 'bottom left' (where
    the curves leave room)."""
    out, px, py = _svg_frame(x_range, y_range, x_label, y_label, title, width, height, ticks_x)
    lx = width - 118 if legend == "bottom right" else 54
    ly0 = height - 44 - 14 * (len(series) - 1)
    if diagonal:
        out.append(f'<line x1="{px(x_range[0]):.1f}" y1="{py(y_range[0]):.1f}" '
                   f'x2="{px(x_range[1]):.1f}" y2="{py(y_range[1]):.1f}" class="chance"/>')
    for k, s in enumerate(series):
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(s["x"], s["y"]))
        out.append(f'<polyline points="{pts}" fill="none" stroke="{s["colour"]}" '
                   f'stroke-width="2" class="curve"/>')
        if s.get("points"):
            for i, (x, y) in enumerate(zip(s["x"], s["y"])):
                tip = s.get("tips", [None] * len(s["x"]))[i]
                dot = (f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="4" fill="{s["colour"]}">'
                       + (f"<title>{esc(tip)}</title>" if tip else "") + "</circle>")
                link = s.get("links", [None] * len(s["x"]))[i]
                out.append(f'<a href="{esc(link)}" class="point">{dot}</a>' if link else dot)
        ly = ly0 + 14 * k
        out.append(f'<rect x="{lx}" y="{ly - 5}" width="10" height="3" '
                   f'fill="{s["colour"]}"/><text x="{lx + 14}" y="{ly}" class="lg">'
                   f"{esc(s['label'])}</text>")
    for m in marks:
        out.append(f'<circle cx="{px(m["x"]):.1f}" cy="{py(m["y"]):.1f}" r="5" class="mark">'
                   f"<title>{esc(m['label'])}</title></circle>")
    out.append("</svg>")
    return "".join(out)


def svg_histogram(groups: Sequence[tuple], title: str, x_label: str = "image score",
                  threshold: Optional[float] = None, bins: int = 24, width: int = 400,
                  height: int = 260) -> str:
    """Overlaid histograms of (label, values, colour) groups with the threshold as a dashed
    line; shared bins over all values (and the threshold)."""
    values = [np.asarray(v, np.float64) for _, v, _ in groups]
    pool = np.concatenate(values + ([np.array([threshold])] if threshold is not None else []))
    if pool.size == 0:
        return ""
    edges = np.histogram_bin_edges(pool, bins)
    if edges[-1] == edges[0]:
        edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
    counts = [np.histogram(v, edges)[0] for v in values]
    top = 4 * -(-max(1, max(int(c.max()) for c in counts if c.size)) // 4)  # whole ticks
    ticks = np.linspace(edges[0], edges[-1], 5)
    key = ":" + "".join(f'<tspan fill="{colour}"> \u25a0 </tspan>{esc(label)} ({len(v)})'
                        for (label, _, colour), v in zip(groups, values))
    out, px, py = _svg_frame((edges[0], edges[-1]), (0, top), x_label, "images", title, width,
                             height, ticks, key)
    for (label, _, colour), c in zip(groups, counts):
        for lo, hi, n in zip(edges[:-1], edges[1:], c):
            if n:
                out.append(f'<rect x="{px(lo):.1f}" y="{py(n):.1f}" '
                           f'width="{max(px(hi) - px(lo) - 0.5, 0.5):.1f}" '
                           f'height="{py(0) - py(n):.1f}" fill="{colour}" opacity="0.55">'
                           f"<title>{esc(label)}: {int(n)}</title></rect>")
    if threshold is not None:
        x = px(threshold)
        side = ('x="{:.1f}" text-anchor="end"'.format(x - 3) if x > px((edges[0] + edges[-1]) / 2)
                else f'x="{x + 3:.1f}"')
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{py(top):.1f}" y2="{py(0):.1f}" '
                   f'class="threshold"><title>threshold {threshold:.6g}</title></line>'
                   f'<text {side} y="{py(top) + 10:.1f}" class="lg">threshold</text>')
    out.append("</svg>")
    return "".join(out)


def svg_ranks(scores: Sequence[float], injected: Sequence[bool], flagged: Sequence[bool],
              title: str, width: int = 680, height: int = 200) -> str:
    """Training images in rank order: a bar per image (its audit score), injected ones in the
    anomaly colour, flagged ones outlined."""
    scores = np.asarray(scores, np.float64)
    if scores.size == 0:
        return ""
    lo, hi = min(0.0, float(scores.min())), float(scores.max())
    hi = hi if hi > lo else lo + 1.0
    n = scores.size
    out, px, py = _svg_frame((0, n), (lo, hi), "rank (1 = most likely defective)",
                             "audit score", title, width, height,
                             np.unique(np.linspace(0, n, 5).round()))
    for i, (s, inj, flag) in enumerate(zip(scores, injected, flagged)):
        colour = ANOMALY_COLOUR if inj else "#999999"
        outline = ' stroke="#000" stroke-width="0.8"' if flag else ""
        out.append(f'<rect x="{px(i):.1f}" y="{py(s):.1f}" '
                   f'width="{max(px(i + 1) - px(i) - 0.3, 0.4):.2f}" '
                   f'height="{max(py(lo) - py(s), 0):.1f}" fill="{colour}"{outline}>'
                   f"<title>rank {i + 1}: {s:.4g}{' injected' if inj else ''}"
                   f"{' flagged' if flag else ''}</title></rect>")
    out.append(f'<rect x="{width - 118}" y="31" width="10" height="8" fill="{ANOMALY_COLOUR}"/>'
               f'<text x="{width - 104}" y="38" class="lg">injected</text>'
               f'<rect x="{width - 118}" y="45" width="10" height="8" fill="#999999" '
               f'stroke="#000" stroke-width="0.8"/>'
               f'<text x="{width - 104}" y="52" class="lg">flagged (outlined)</text></svg>')
    return "".join(out)


def secs(v: float) -> str:
    """Seconds for a label: 0.04, 6.1, 1,234."""
    if 0 < abs(v) < 0.095:
        return f"{v:.2f}"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.1f}"


def svg_stage_bars(bars: Sequence[tuple], title: str, width: int = 460) -> str:
    """Horizontal bars of (label, seconds, colour) in the given order, each labelled with its
    name on the left and its seconds on the right, lengths scaled to the largest."""
    bars = [(label, max(float(v), 0.0), colour) for label, v, colour in bars]
    if not bars:
        return ""
    row, top = 16, 24
    left = min(10 + 6 * max(len(label) for label, _, _ in bars), width // 2)  # the names
    span = max(width - left - 52, 40)  # room for "1,234 s" after the longest bar
    height = top + row * len(bars) + 4
    vmax = max(v for _, v, _ in bars) or 1.0
    total = sum(v for _, v, _ in bars) or 1.0
    out = [f'<svg class="chart stages" xmlns="http://www.w3.org/2000/svg" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" role="img">',
           f"<title>{esc(title)}</title>",
           f'<text x="8" y="15" class="t">{esc(title)}</text>',
           f'<line x1="{left}" x2="{left}" y1="{top - 2}" y2="{height - 4}" class="frame"/>']
    for k, (label, v, colour) in enumerate(bars):
        y = top + row * k
        w = v / vmax * span
        out.append(f"<g><title>{esc(label)}: {v:.2f} s, {100 * v / total:.0f}% of all bars"
                   f'</title><text x="{left - 4}" y="{y + 9}" class="yt">{esc(label)}</text>'
                   f'<rect class="bar" x="{left}" y="{y}" width="{w:.1f}" height="11" '
                   f'fill="{colour}"/><text x="{left + w + 4:.1f}" y="{y + 9}" class="lg">'
                   f"{secs(v)} s</text></g>")
    out.append("</svg>")
    return "".join(out)
