"""Image-level denoising, the SoftPatch paper's "PaDiM* + PatchCore" baselines (issue 29): a first
method (`model.prefilter`, any registered one) is fitted on the whole noisy training set, scores
each training image as if left out of its fit (leave-own-image-out where it has that form, else
`threshold.folds` seeded folds: pipeline/decisions.py), and the most suspicious share of the
images (`model.prefilter_share`: a fixed share, or `auto`, the audit's own modified z-score rule,
evaluation/audit.py) is dropped; the configured method is then fitted on the rest. Its scores,
checkpoint, predict and export are that second method's alone.

The first method's ranking is recorded: DIR/.../prefilter_<category>.csv (name, left-out score,
rank, dropped, injected) and result.json's `prefilter_*` fields, with its audit AUROC / AP /
precision@n against the injected images.
"""
import csv
import dataclasses
import os
from typing import Callable, Optional, Tuple, Union

import numpy as np

from softpatch_jax import methods
from softpatch_jax.data import noise
from softpatch_jax.evaluation import audit
from softpatch_jax.io.text import csv_text_cell
from softpatch_jax.pipeline import decisions
from softpatch_jax.timing import NO_CLOCK, StageClock


@dataclasses.dataclass(frozen=True)
class Prefilter:
    """`method` the first method's name ('' = none); `share` the share dropped or 'auto'."""
    method: str = ""
    share: Union[str, float] = "auto"


def options(config) -> Prefilter:
    """The `model.prefilter*` fields, checked (one line naming the field)."""
    name = config.model.get("prefilter", "")
    share = config.model.get("prefilter_share", "auto")
    if not name:
        return Prefilter()
    if name not in methods.names():
        raise ValueError(f"model.prefilter={name!r} is not a method; choose one of "
                         f"{', '.join(methods.names())} (or '' for none)")
    if share != "auto":
        try:
            share = float(share)
        except (TypeError, ValueError):
            share = -1.0
        if not 0.0 <= share < 1.0:
            raise ValueError(f"model.prefilter_share={config.model.prefilter_share!r} must be "
                             "'auto' or a share in [0, 1), e.g. 0.1")
    return Prefilter(name, share)


def first_config(config):
    """The first method's run config: `config` with model.method = model.prefilter and no
    prefilter of its own (its other sections, e.g. padim.*, as configured)."""
    c = config.copy_and_resolve_references()
    with c.unlocked():
        c.model.method, c.model.prefilter = c.model.prefilter, ""
    return c


@dataclasses.dataclass
class Dropped:
    """The first method's ranking of the B training images: `scores` (B,) left-out scores,
    `dropped` (B,) bool, `source` how they were left out, and its split without them."""
    scores: np.ndarray
    dropped: np.ndarray
    source: str
    split: noise.NoisySplit

    def record(self, p: Prefilter, injected: np.ndarray) -> dict:
        figures = audit.audit_metrics(injected, self.scores)
        return {"prefilter": p.method, "prefilter_share": p.share,
                "prefilter_source": self.source, "prefilter_dropped": int(self.dropped.sum()),
                "prefilter_dropped_injected": int((self.dropped & injected).sum()),
                **{f"prefilter_{k}": v for k, v in figures.items()}}


def kept_split(split: noise.NoisySplit, dropped: np.ndarray) -> noise.NoisySplit:
    """`split` without the dropped training images; the injected ones stay last (their order
    kept), as `NoisySplit.train` promises."""
    b, n_inj = len(split.train), len(split.injected)
    train = [s for s, d in zip(split.train, dropped) if not d]
    injected = [s for i, (s, d) in enumerate(zip(split.train, dropped))
                if i >= b - n_inj and not d]
    return dataclasses.replace(split, train=train, injected=injected)


def drop_suspicious(config, split: noise.NoisySplit, key, directory: str, label: str,
                    extractor_for: Callable, clock: StageClock = NO_CLOCK
                    ) -> Tuple[Prefilter, Optional[Dropped]]:
    """Runs the prefilter of `config` on `split`'s training images -> (its options, Dropped;
    None without a prefilter). `extractor_for(config, method)`: the first method's extractor
    (pipeline/evaluate.py's); `directory`: where a first method that trains keeps its state."""
    p = options(config)
    if not p.method:
        return p, None
    fc = first_config(config)
    first = methods.from_config(fc)
    first.check(len(split.train))
    d = fc.data
    with clock.stage("prefilter"):
        extractor, learned = first.prepare(split.train, extractor_for(fc, first),
                                           os.path.join(directory, "prefilter"), key)
        feats = extractor.extract(split.train, d.resize, d.image_size, d.batch_size,
                                  f"{label}: prefilter features")
        fitted = first.fit(feats, key, learned)
        settings = dataclasses.replace(decisions.Settings.from_config(fc), source="auto")
        left_out, source = decisions.training_scores(first, fitted, feats, key, learned,
                                                     settings, fc.seed)
        scores = np.asarray(left_out.image, np.float64)
        dropped = audit.flag(scores, p.share)
    kept = kept_split(split, dropped)
    try:
        methods.from_config(config).check(len(kept.train))
    except ValueError as e:
        raise ValueError(f"model.prefilter={p.method} dropped {int(dropped.sum())} of "
                         f"{len(split.train)} training images: {e}") from None
    return p, Dropped(scores, dropped, source, kept)


def write_ranking(path: str, names, dropped: Dropped, injected: np.ndarray) -> None:
    """prefilter_<category>.csv: name, left-out score, rank (1 = most suspicious), dropped,
    injected."""
    ranks = audit.ranks(dropped.scores)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "score", "rank", "dropped", "injected"])
        for i in np.argsort(ranks, kind="stable"):
            w.writerow([csv_text_cell(names[i]), f"{dropped.scores[i]:.6g}", int(ranks[i]),
                        int(dropped.dropped[i]), int(injected[i])])
