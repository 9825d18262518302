"""Figures for people: AUROC-versus-noise curves and anomaly-map overlays (matplotlib, Agg)."""
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from softpatch_jax.data import preprocess  # noqa: E402
from softpatch_jax.io.text import mpl_text  # noqa: E402


def sweep_curves(rows: List[Dict], path: str,
                 metrics=("image_auroc", "pixel_auroc", "aupro")) -> None:
    """rows: dicts with mode, method, ratio and metric values (already averaged over categories).
    One panel per (metric, mode), one line per method. Names from data and config go through
    `mpl_text`: a '$' pair would be parsed as mathtext, which can raise."""
    metrics = [m for m in metrics if any(r.get(m) is not None for r in rows)]
    modes = sorted({r["mode"] for r in rows})
    fig, axes = plt.subplots(len(metrics), len(modes), figsize=(4.5 * len(modes),
                                                                 3.6 * len(metrics)),
                             squeeze=False)
    for i, metric in enumerate(metrics):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            for method in sorted({r["method"] for r in rows}):
                pts = sorted((r["ratio"], r[metric]) for r in rows
                             if r["mode"] == mode and r["method"] == method
                             and r.get(metric) is not None)
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=mpl_text(method))
            ax.set_title(mpl_text(f"{metric} ({mode})"))
            ax.set_xlabel("noise ratio")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def map_png(sample, amap: np.ndarray, resize: int, crop, path: str, vmax: float,
            image: Optional[np.ndarray] = None) -> None:
    """One image with its anomaly map overlaid (colour scale 0..vmax) and its score. `image`:
    the sample's `preprocess.display_image`, when the caller has it."""
    img = preprocess.display_image(sample, resize, crop) if image is None else image
    fig, ax = plt.subplots(figsize=(3, 3 * amap.shape[0] / amap.shape[1] + 0.2))  # aspect kept
    ax.imshow(img)
    ax.imshow(amap, cmap="jet", alpha=0.45, vmin=0, vmax=vmax)
    ax.set_title(f"{mpl_text(sample.name)}\nscore {amap.max():.4g}", fontsize=7)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def overlays(samples: Sequence, maps: np.ndarray, masks: np.ndarray, resize: int, crop,
             path: str, title: str = "", count: int = 6) -> None:
    """The first anomalous and a normal test image: image, map overlay, ground-truth contour."""
    anomalous = [i for i, s in enumerate(samples) if s.label == 1][:count - 1]
    normal = [i for i, s in enumerate(samples) if s.label == 0][:1]
    picks = anomalous + normal
    if not picks:
        return
    lo, hi = float(maps.min()), float(maps.max())
    aspect = maps.shape[1] / maps.shape[2]  # tall or wide parts keep their shape
    fig, axes = plt.subplots(1, len(picks), figsize=(2.6 * len(picks), 2.6 * aspect + 0.3),
                             squeeze=False)
    for ax, i in zip(axes[0], picks):
        s = samples[i]
        img = preprocess.display_image(s, resize, crop)
        ax.imshow(img)
        ax.imshow(maps[i], cmap="jet", alpha=0.45, vmin=lo, vmax=hi)
        if masks[i].any():
            ax.contour(masks[i], levels=[0.5], colors="white", linewidths=1.0)
        ax.set_title(f"{mpl_text(s.defect)}\n{maps[i].max():.3g}", fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(mpl_text(title), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
