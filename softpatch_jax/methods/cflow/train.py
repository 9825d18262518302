"""Trains CFLOW's flows, one per tapped stage, by maximum likelihood on the training fibres (a
fibre: one position's feature vector at a stage's own resolution), as the official `train.py`.

Per sub-epoch each stage's fibres (all training images) are shuffled and cut into batches of
`fiber_batch` (the remainder dropped, as the official loop does); each batch is one Adam step
on that stage's flow, its own optimiser state. That is torch's Adam over the union of the flows
from torch 2.0 on, where `zero_grad` drops the other stages' gradients; under the torch 1.8 the
official code was tested with, zeroed gradients still count, so each step also moves the other
stages by momentum and advances their step counts (a deviation: docs/methods.md, "CFLOW"). The
learning rate follows the official schedule: a linear warm-up from lr/10 over the first
`warmup_epochs` meta-epochs, then cosine decay by meta-epoch to lr * decay_rate^3. A sub-epoch
is one `jax.lax.scan` over its steps.

An orbax checkpoint after every `checkpoint_every` meta-epochs; a rerun resumes from the latest
one when it was written for the same options and the same training features (else it starts
over). Checkpoints live in a folder named by that fingerprint, so the k-fold refits of the
thresholds never overwrite the main fit's.
"""
import dataclasses
import hashlib
import logging
import math
import os
import time
from typing import Dict, List, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from softpatch_jax.files import fingerprint
from softpatch_jax.io.checkpoint import TrainingCheckpoints
from softpatch_jax.methods.cflow import flow as cflow

STATE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Options:
    """`config.cflow`, checked (see softpatch_jax/defaults.py for what each field does)."""
    layers: str
    coupling_blocks: int
    clamp_alpha: float
    condition_dim: int
    fiber_batch: int
    meta_epochs: int
    sub_epochs: int
    learning_rate: float
    decay_rate: float
    warmup_epochs: int
    checkpoint_every: int

    @classmethod
    def from_config(cls, cflow_config) -> "Options":
        """One-line errors for impossible `config.cflow` settings (the one place they are
        checked)."""
        f = cls(**cflow_config.to_dict())
        if not f.layers.strip():
            raise ValueError("cflow.layers is empty; name the tapped stages, e.g. "
                             "'stage3,stage5,stage6'")
        for field in ("coupling_blocks", "fiber_batch", "sub_epochs", "checkpoint_every"):
            if getattr(f, field) < 1:
                raise ValueError(f"cflow.{field}={getattr(f, field)} must be >= 1")
        if f.condition_dim < 4 or f.condition_dim % 4:
            raise ValueError(f"cflow.condition_dim={f.condition_dim} must be a positive "
                             "multiple of 4 (sin and cos of rows and columns)")
        if f.meta_epochs < 0 or f.warmup_epochs < 0:
            raise ValueError(f"cflow.meta_epochs={f.meta_epochs} and cflow.warmup_epochs="
                             f"{f.warmup_epochs} must be >= 0")
        if f.clamp_alpha <= 0 or f.learning_rate <= 0 or not 0 < f.decay_rate <= 1:
            raise ValueError(f"cflow.clamp_alpha={f.clamp_alpha} and cflow.learning_rate="
                             f"{f.learning_rate} must be > 0, cflow.decay_rate="
                             f"{f.decay_rate} in (0, 1]")
        return f


@dataclasses.dataclass(frozen=True)
class Stage:
    """One tapped stage inside the features (every tapped channel on the finest grid, finest
    tap first): its channels [start, stop) and its own grid (h, w)."""
    start: int
    stop: int
    grid: Tuple[int, int]

    @property
    def dim(self) -> int:
        return self.stop - self.start


def stages(tap_shapes: Sequence[Tuple[int, ...]]) -> List[Stage]:
    """The tapped maps' shapes (B, h, w, C), finest first (the features' channel order) ->
    their Stages."""
    out, start = [], 0
    for shape in tap_shapes:
        out.append(Stage(start, start + int(shape[-1]), (int(shape[1]), int(shape[2]))))
        start += int(shape[-1])
    return out


def flows(f: Options, layout: Sequence[Stage]) -> List[cflow.ConditionalFlow]:
    """One conditional flow per stage, as `f` configures it."""
    return [cflow.ConditionalFlow(s.dim, f.coupling_blocks, f.clamp_alpha) for s in layout]


def conditions(f: Options, layout: Sequence[Stage]) -> List[np.ndarray]:
    """Per stage its positions' encodings, (h * w, condition_dim) float32."""
    return [cflow.positional_encoding(f.condition_dim, *s.grid) for s in layout]


def native_positions(grid: Tuple[int, int], finest: Tuple[int, int]) -> np.ndarray:
    """Where a stage's own positions sit on the finest grid, (h * w,) row-major indices: the
    features hold a coarser stage nearest-upsampled (finest row i reads row floor(i * h / H)),
    so row k is read back at the first finest row that reads it, ceil(k * H / h)."""
    (h, w), (hf, wf) = grid, finest
    if h > hf or w > wf:
        raise ValueError(f"a stage's grid {grid} is finer than the features' grid {finest}")
    rows = -(-np.arange(h) * hf // h)
    cols = -(-np.arange(w) * wf // w)
    return (rows[:, None] * wf + cols[None, :]).reshape(-1)


def stage_fibres(patches: np.ndarray, stage: Stage, finest: Tuple[int, int]) -> np.ndarray:
    """(N, P, D) features -> (N, h * w, stage.dim) the stage's fibres on its own grid."""
    return patches[:, native_positions(stage.grid, finest), stage.start:stage.stop]


def learning_rates(f: Options, meta_epoch: int, sub_epoch: int, steps: int) -> np.ndarray:
    """(steps,) the official schedule's rates for one sub-epoch (module docstring); the
    warm-up advances per step, where the official code advances per image batch."""
    eta_min = f.learning_rate * f.decay_rate ** 3
    span = max(f.meta_epochs, 1)

    def cosine(epoch):
        return eta_min + (f.learning_rate - eta_min) * (1 + math.cos(math.pi * epoch / span)) / 2
    if meta_epoch >= f.warmup_epochs:
        return np.full(steps, cosine(meta_epoch), np.float32)
    lo, hi = f.learning_rate / 10.0, cosine(f.warmup_epochs)
    done = meta_epoch * f.sub_epochs * steps + sub_epoch * steps + np.arange(steps)
    return (lo + done / (f.warmup_epochs * f.sub_epochs * steps) * (hi - lo)).astype(np.float32)


def _digest(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array).view(np.uint8)).hexdigest()


def _epoch_fn(net: cflow.ConditionalFlow, tx: optax.GradientTransformation):
    """jitted (params, opt_state, rotation, fibres (E, D), conditions (S, C), batches (T, N),
    rates (T,)) -> (params, opt_state, (T,) mean losses): one sub-epoch of one stage."""
    def loss_fn(params, rotation, x, c):
        z, logdet = net.apply({"params": params, "rotation": rotation}, x, c)
        return jnp.mean(cflow.nll_loss(cflow.log_prob_per_dim(z, logdet)))

    def epoch(params, opt_state, rotation, fibres, conditions, batches, rates):
        positions = conditions.shape[0]

        def step(carry, inputs):
            params, opt_state = carry
            idx, lr = inputs
            loss, grads = jax.value_and_grad(loss_fn)(params, rotation, fibres[idx],
                                                     conditions[idx % positions])
            updates, opt_state = tx.update(grads, opt_state, params)
            params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
            return (params, opt_state), loss
        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), (batches, rates))
        return params, opt_state, losses
    return jax.jit(epoch, donate_argnums=(0, 1))


def train(f: Options, fibres: Sequence[np.ndarray], layout: Sequence[Stage], directory: str,
          key: jax.Array, identity: Dict = None, progress: bool = True) -> List[Dict]:
    """Fits one flow per stage. `fibres`: per stage (B, h * w, dim) the training images'
    fibres on the stage's own grid. -> per stage its variables {'params', 'rotation'};
    checkpoints and a loss log (`log.json`: per sub-epoch mean losses by stage, seconds) in a
    folder of `directory` named by the fingerprint of all that determines the result."""
    nets = flows(f, layout)
    encodings = [jnp.asarray(c) for c in conditions(f, layout)]
    init_keys = jax.random.split(jax.random.fold_in(key, 0xC710), len(layout))
    data_key = jax.random.fold_in(key, 0xDA7A)
    variables = [cflow.init(net, k, f.condition_dim) for net, k in zip(nets, init_keys)]
    tx = optax.scale_by_adam()  # torch's Adam defaults; the rate is applied per step
    state = {"params": [v["params"] for v in variables],
             "opt": [tx.init(v["params"]) for v in variables],
             "epoch": np.zeros((), np.int32)}   # finished meta-epochs

    stamp = fingerprint(dict(cflow=dataclasses.asdict(f), identity=identity or {},
                             state=STATE_VERSION, layout=[dataclasses.asdict(s) for s in layout],
                             fibres=[_digest(x) for x in fibres]))
    folder = os.path.join(os.path.abspath(directory), "cflow", stamp[:16])
    os.makedirs(folder, exist_ok=True)
    saved = TrainingCheckpoints(folder)
    state, log, resumed = saved.resume(state)
    if resumed:
        logging.info("CFLOW: resumed after meta-epoch %d", int(state["epoch"]))
    start = int(state["epoch"])
    log = [e for e in log if e["meta_epoch"] < start]

    epoch_fns = [_epoch_fn(net, tx) for net in nets]
    flat = [jnp.asarray(x.reshape(-1, x.shape[-1]), jnp.float32) for x in fibres]
    # A stage with fewer fibres than a batch (tiny images, few of them) takes them all in one
    # step, where the official code stops.
    batch = [min(f.fiber_batch, x.shape[0]) for x in flat]
    params, opt = list(state["params"]), list(state["opt"])
    total = f.meta_epochs * f.sub_epochs
    with tqdm(total=total, initial=start * f.sub_epochs, desc="cflow epochs",
              disable=not progress, leave=False) as bar:
        for meta in range(start, f.meta_epochs):
            for sub in range(f.sub_epochs):
                t0, losses = time.time(), []
                epoch_key = jax.random.fold_in(data_key, meta * f.sub_epochs + sub)
                for i, (x, fn, n) in enumerate(zip(flat, epoch_fns, batch)):
                    steps = x.shape[0] // n
                    perm = jax.random.permutation(jax.random.fold_in(epoch_key, i), x.shape[0])
                    batches = perm[:steps * n].reshape(steps, n)
                    rates = jnp.asarray(learning_rates(f, meta, sub, steps))
                    params[i], opt[i], stage_losses = fn(params[i], opt[i],
                                                         variables[i]["rotation"], x,
                                                         encodings[i], batches, rates)
                    losses.append(float(jnp.mean(stage_losses)))
                log.append({"meta_epoch": meta, "sub_epoch": sub,
                            "seconds": round(time.time() - t0, 2), "loss": losses})
                bar.set_postfix(loss=" ".join(f"{v:.4f}" for v in losses))
                bar.update(1)
            done = meta + 1
            if done % f.checkpoint_every == 0 or done == f.meta_epochs:
                state = {"params": params, "opt": opt, "epoch": np.asarray(done, np.int32)}
                saved.save(done, state, log)
    saved.close()
    return [{"params": p, "rotation": v["rotation"]} for p, v in zip(params, variables)]
