"""CFLOW-AD (Gudovskiy et al., "CFLOW-AD: Real-Time Unsupervised Anomaly Detection with
Localization via Conditional Normalizing Flows", WACV 2022), the SoftPatch paper's strongest
non-memory baseline, from the paper and the official code's defaults.

prepare: where each tapped stage sits in the features (every tapped channel on the finest grid,
features/padim.py with ALL_CHANNELS) and where the flows keep their checkpoints.
fit: one conditional flow per stage (flow.py), trained on the training fibres at the stage's
own resolution with the positional encoding as the condition (train.py); then each stage's
largest per-dimension log-likelihood over the training fibres, the normaliser.
score: per stage, p = exp(min(log-likelihood - that maximum, 0)) on its own grid, upsampled
bilinearly (align_corners=True, as the official code) to the finest grid and summed; the patch
score is (number of stages) - sum, so higher is more anomalous; the image score is the maximum
of the map, blurred by `model.blur_sigma`.

Deviations (docs/methods.md, "CFLOW"): our backbone and taps (the ends of EfficientNet-Lite's
stride-8, -16 and -32 stages, where the official EfficientNet-B5 choice is the same three
strides); the likelihoods normalised by the training fibres' maximum and the ratio capped at 1,
where the official code takes the test set's (so a test image's score depends on no other test
image); float32, where the official score is float64 (a ratio under e^-87 underflows to 0; it
would not move a sum of order 1 in float64 either); upsampled to the
finest feature grid, then by the shared map operator to the image, and blurred; the fibres of
all training images shuffled together per sub-epoch, where the official loop shuffles within
each batch of 32 images (and drops fewer than 32 images, where we train on them); the warm-up's
rate advances per fibre batch, not per image batch; the rotations are drawn by JAX (QR of a
Gaussian, Haar as scipy's `special_ortho_group`, another random stream); separate Adam states
per stage (train.py).
"""
import dataclasses
import functools
from typing import Any, Dict, List, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from softpatch_jax.features.extractor import finest_first
from softpatch_jax.features.patch import bilinear_matrix
from softpatch_jax.features.types import ALL_CHANNELS
from softpatch_jax.methods.base import Features, FeatureSpec, Method
from softpatch_jax.methods.cflow import flow as cflow
from softpatch_jax.methods.cflow import train as cflow_train
from softpatch_jax.methods.registry import register
from softpatch_jax.ops.chunking import chunk_size
from softpatch_jax.settings import comma_list


@flax.struct.dataclass
class FlowState:
    flows: Tuple[Dict[str, Any], ...]   # per stage, finest first: {'params', 'rotation'}
    stages: np.ndarray                  # (L, 4) int32: channel start, stop; grid h, w
    log_prob_max: np.ndarray            # (L,) the training fibres' largest log-likelihood

    def layout(self) -> List[cflow_train.Stage]:
        return [cflow_train.Stage(int(a), int(b), (int(h), int(w)))
                for a, b, h, w in np.asarray(self.stages)]

    def to_arrays(self):
        return {"flows": {str(i): jax.tree.map(np.asarray, f) for i, f in enumerate(self.flows)},
                "stages": np.asarray(self.stages, np.int32),
                "log_prob_max": np.asarray(self.log_prob_max, np.float32)}

    @classmethod
    def from_arrays(cls, arrays) -> "FlowState":
        flows = arrays["flows"]
        return cls(tuple(flows[str(i)] for i in range(len(flows))),
                   np.asarray(arrays["stages"], np.int32),
                   np.asarray(arrays["log_prob_max"], np.float32))


@dataclasses.dataclass(frozen=True)
class Plan:
    """What `prepare` hands to `fit`: the stages in the features and the checkpoint folder."""
    layout: Tuple[cflow_train.Stage, ...]
    directory: str


def stage_log_probs(net: cflow.ConditionalFlow, variables, fibres: jnp.ndarray,
                    conditions: jnp.ndarray, rows: int) -> jnp.ndarray:
    """(N, S, d) fibres of N images on a stage's grid, (S, C) conditions -> (N, S) their
    log-likelihoods per dimension; `rows` images at a time (lax.map over chunks)."""
    n, s, d = fibres.shape
    pad = (-n) % rows
    x = jnp.concatenate([fibres, jnp.repeat(fibres[-1:], pad, axis=0)]) if pad else fibres

    def chunk(xs):                                                     # (rows, S, d)
        c = jnp.broadcast_to(conditions, (rows,) + conditions.shape).reshape(rows * s, -1)
        z, logdet = net.apply(variables, xs.reshape(rows * s, d), c)
        return cflow.log_prob_per_dim(z, logdet).reshape(rows, s)
    return jax.lax.map(chunk, x.reshape(-1, rows, s, d)).reshape(-1, s)[:n]


class CFLOW(Method):
    name = "cflow"
    prepare_stage = "flow_layout"

    def __init__(self, *, options: cflow_train.Options, image_size=224, blur_sigma: float = 4.0,
                 budget_mb: float = 1024, identity: Dict = None):
        self.options = options
        self.features = FeatureSpec(tuple(comma_list(options.layers)), ALL_CHANNELS)
        self.image_size, self.blur_sigma, self.budget_mb = image_size, blur_sigma, budget_mb
        self.identity = identity or {}

    @classmethod
    def from_config(cls, config) -> "CFLOW":
        if config.data.tile:  # a stage's own grid is read back from the whole image's
            raise ValueError(f"data.tile={config.data.tile!r} is not available with "
                             "model.method=cflow; set data.tile=0")
        b = config.backbone
        identity = dict(backbone=b.name, weights=b.weights, dtype=b.dtype,
                        image_size=str(config.data.image_size), resize=config.data.resize)
        return cls(options=cflow_train.Options.from_config(config.cflow),
                   image_size=config.data.image_size, blur_sigma=config.model.blur_sigma,
                   budget_mb=config.runtime.memory_budget_mb, identity=identity)

    @property
    def label(self) -> str:
        return f"{self.options.coupling_blocks} blocks"

    def _rows(self, layout) -> int:
        """Images per scoring chunk under runtime.memory_budget_mb: each fibre's widest
        activations (the subnet's hidden layer), a few held at once."""
        c = self.options.condition_dim
        per_image = sum(s.grid[0] * s.grid[1] * 4 * 4 * (2 * (s.dim + c) + s.dim)
                        for s in layout)
        return max(1, min(64, chunk_size(per_image, self.budget_mb)))

    def prepare(self, samples, extractor, directory: str, key: jax.Array):
        shapes = extractor.tap_shapes(self.image_size)
        ordered = finest_first({k: np.empty(v, np.uint8) for k, v in shapes.items()},
                               self.features.layers)
        return extractor, Plan(tuple(cflow_train.stages([m.shape for m in ordered])),
                               directory)

    def fit(self, features: Features, key: jax.Array, learned: Plan = None,
            progress: bool = True) -> FlowState:
        if learned is None:
            raise ValueError("CFLOW reads its stages from the extractor: run prepare() first")
        layout = list(learned.layout)
        fibres = [cflow_train.stage_fibres(np.asarray(features.patches), s, features.grid)
                  for s in layout]
        identity = {**self.identity, "key": np.asarray(jax.random.key_data(key)).tolist()}
        flows = cflow_train.train(self.options, fibres, layout, learned.directory, key,
                                  identity, progress)
        rows = self._rows(layout)
        maxima = []
        for net, variables, x, cond in zip(cflow_train.flows(self.options, layout), flows,
                                           fibres, cflow_train.conditions(self.options, layout)):
            lp = jax.jit(functools.partial(stage_log_probs, net, rows=rows))(
                variables, jnp.asarray(x), jnp.asarray(cond))
            maxima.append(float(jnp.max(lp)))
        stages = np.asarray([[s.start, s.stop, *s.grid] for s in layout], np.int32)
        return FlowState(tuple(flows), stages, np.asarray(maxima, np.float32))

    def traced_scorer(self, fitted: FlowState):
        """(module docstring) The flows' variables and normalisers are the inputs; the stage
        layout and the finest grid are static (from the state's shapes)."""
        layout = fitted.layout()
        finest = (max(s.grid[0] for s in layout), max(s.grid[1] for s in layout))
        nets, rows = cflow_train.flows(self.options, layout), self._rows(layout)
        ops = []
        for s, cond in zip(layout, cflow_train.conditions(self.options, layout)):
            ops.append((cflow_train.native_positions(s.grid, finest), cond,
                        bilinear_matrix(s.grid[0], finest[0], align_corners=True)
                        .astype(np.float32),
                        bilinear_matrix(s.grid[1], finest[1], align_corners=True)
                        .astype(np.float32)))

        def scorer(inputs, feats):
            n = feats.shape[0]
            total = jnp.zeros((n,) + finest, jnp.float32)
            for i, (s, net, (pos, cond, up_y, up_x)) in enumerate(zip(layout, nets, ops)):
                lp = stage_log_probs(net, inputs["flows"][str(i)],
                                     feats[:, pos, s.start:s.stop], jnp.asarray(cond), rows)
                # A fibre likelier than every training fibre is as normal as the likeliest
                # (p <= 1, as with the official test-set maximum): bounds the patch scores to
                # [0, stages] and keeps exp from amplifying float32 rounding in the likelihood.
                prob = jnp.exp(jnp.minimum(lp - inputs["log_prob_max"][i], 0.0))
                prob = prob.reshape(n, *s.grid)
                total = total + jnp.einsum("Hh,nhw,Ww->nHW", up_y, prob, up_x,
                                           precision=jax.lax.Precision.HIGHEST)
            return (len(layout) - total).reshape(n, -1), None
        return scorer, {"flows": {str(i): v for i, v in enumerate(fitted.flows)},
                        "log_prob_max": jnp.asarray(fitted.log_prob_max)}

    def fitted_from_arrays(self, arrays) -> FlowState:
        return FlowState.from_arrays(arrays)

    def summary(self, fitted: FlowState) -> dict:
        params = sum(int(np.size(p)) for f in fitted.flows
                     for p in jax.tree.leaves(f["params"]))
        return {"flow_stages": len(fitted.flows), "flow_parameters": params}


register(CFLOW)
