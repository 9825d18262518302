"""Trains FYD's alignment (spatial transformers and heads) on one category's training images.

optax optimiser and schedule from `Options`; a Flax `TrainState` carrying the heads' BatchNorm
statistics (training mode in the step, the backbone's stay frozen) and the epoch; one jitted step;
an orbax checkpoint after every `checkpoint_every` epochs, and a rerun resumes from the latest one
when it was written for the same options and the same training images (else it starts over).
"""
import dataclasses
import logging
import os
import shutil
import time
from typing import Any, Dict, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from tqdm.auto import tqdm

from softpatch_jax import shapes
from softpatch_jax.data import preprocess
from softpatch_jax.data.samples import item_stamp
from softpatch_jax.files import fingerprint
from softpatch_jax.io.checkpoint import TrainingCheckpoints
from softpatch_jax.methods.fyd import model as fyd
from softpatch_jax.methods.fyd import stn
from softpatch_jax.ops import warp as affine

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant")
STATE_VERSION = 2  # 2: a flax TrainState (step, epoch); older checkpoints start over


@dataclasses.dataclass(frozen=True)
class Options:
    """`config.fyd`, checked (see softpatch_jax/defaults.py for what each field does)."""
    epochs: int
    batch_size: int
    optimizer: str
    learning_rate: float
    schedule: str
    warmup_steps: int
    weight_decay: float
    momentum: float
    align_images: bool
    align_features: bool
    transform: str
    feature_transform: str
    padding: str
    max_scale: float
    max_rotation: float
    max_translation: float
    max_shear: float
    image_weight: float
    pixel_factor: int
    centre_weight: float
    proj_dim: int
    pred_dim: int
    checkpoint_every: int

    @classmethod
    def from_config(cls, fyd_config) -> "Options":
        """One-line errors for impossible `config.fyd` settings (the one place they are checked)."""
        f = cls(**fyd_config.to_dict())
        for field in ("transform", "feature_transform"):
            if getattr(f, field) not in stn.FAMILIES:
                raise ValueError(f"fyd.{field}={getattr(f, field)!r} is unknown; choose one of "
                                 f"{', '.join(stn.FAMILIES)}")
        if f.padding not in affine.PADDINGS:
            raise ValueError(f"fyd.padding={f.padding!r} is unknown; choose one of "
                             f"{', '.join(affine.PADDINGS)}")
        if f.max_scale < 1.0:
            raise ValueError(f"fyd.max_scale={f.max_scale} must be >= 1 (scales lie in "
                             "[1/max_scale, max_scale])")
        if f.optimizer not in OPTIMIZERS:
            raise ValueError(f"fyd.optimizer={f.optimizer!r} is unknown; choose one of "
                             f"{', '.join(OPTIMIZERS)}")
        if f.schedule not in SCHEDULES:
            raise ValueError(f"fyd.schedule={f.schedule!r} is unknown; choose one of "
                             f"{', '.join(SCHEDULES)}")
        if f.batch_size < 2:
            raise ValueError(f"fyd.batch_size={f.batch_size} must be >= 2: the losses compare "
                             "images of one batch")
        if f.epochs < 0 or f.learning_rate <= 0:
            raise ValueError(f"fyd.epochs={f.epochs} must be >= 0 and fyd.learning_rate="
                             f"{f.learning_rate} > 0")
        if f.checkpoint_every < 1:
            raise ValueError(f"fyd.checkpoint_every={f.checkpoint_every} must be >= 1")
        return f


def optimizer(f: Options, total_steps: int) -> optax.GradientTransformation:
    warmup = min(int(f.warmup_steps), max(total_steps - 1, 0))
    if f.schedule == "cosine":
        lr = optax.warmup_cosine_decay_schedule(0.0, f.learning_rate, warmup,
                                                max(total_steps, warmup + 1))
    else:
        lr = optax.join_schedules([optax.linear_schedule(0.0, f.learning_rate, warmup),
                                   optax.constant_schedule(f.learning_rate)], [warmup])
    if f.optimizer == "sgd":
        return optax.sgd(lr, momentum=f.momentum)
    if f.optimizer == "adamw":
        return optax.adamw(lr, weight_decay=f.weight_decay)
    return optax.adam(lr)


class TrainState(train_state.TrainState):
    """Flax's TrainState plus the heads' BatchNorm statistics and the finished epochs."""
    batch_stats: Any = None
    epoch: jax.Array = None


def _load_images(samples, resize: int, image_size, batch_size: int) -> np.ndarray:
    out = np.empty((len(samples), *shapes.hw(image_size), 3), np.float32)
    for start, imgs in preprocess.batches(samples, batch_size, resize, image_size):
        out[start:start + len(imgs)] = imgs
    return out


def train(f: Options, samples: Sequence, embedder, directory: str, key: jax.Array,
          resize: int, image_size: int, load_batch: int = 16, identity: Dict = None,
          progress: bool = True) -> Dict:
    """Trains on `samples` (the training images: Samples, paths or arrays) with the backbone of
    `embedder` (an `Embedder`). `identity`: what else the result depends on (backbone, seed, ...), for the
    resume check. -> FYD variables {'params', 'batch_stats'}; checkpoints and a loss log
    (`log.json`: per-epoch mean losses, seconds) in `directory`."""
    model = fyd.build(f, embedder.module, embedder.layers)
    images = _load_images(samples, resize, image_size, load_batch)
    n = len(images)
    bs = min(f.batch_size, n)
    if bs < 2:
        raise ValueError(f"FYD needs at least 2 training images, got {n}")
    steps_per_epoch = n // bs
    tx = optimizer(f, steps_per_epoch * f.epochs)
    init_key, data_key = jax.random.split(key)
    variables = fyd.init(model, init_key, embedder.tap_shapes(image_size, 2), image_size)
    state = TrainState.create(apply_fn=None, params=variables["params"], tx=tx,
                              batch_stats=variables["batch_stats"],
                              epoch=jnp.zeros((), jnp.int32))

    stamp_value = fingerprint(dict(fyd=dataclasses.asdict(f), identity=identity or {},
                                   resize=resize, image_size=image_size, state=STATE_VERSION,
                                   images=[item_stamp(s) for s in samples]))
    directory = os.path.abspath(directory)
    stamp = os.path.join(directory, "fingerprint.txt")
    if os.path.isdir(directory) and (not os.path.isfile(stamp) or
                                     open(stamp).read().strip() != stamp_value):
        logging.warning("FYD checkpoints in %s are for another config or split; starting over",
                        directory)
        shutil.rmtree(directory)
    os.makedirs(directory, exist_ok=True)
    with open(stamp, "w") as fh:
        fh.write(stamp_value)
    saved = TrainingCheckpoints(directory)
    state, log, resumed = saved.resume(state)
    if resumed:
        logging.info("FYD: resumed from epoch %d", int(state.epoch))
    log = [e for e in log if e["epoch"] <= int(state.epoch)]  # epochs the state has seen

    def step(state, bb_vars, batch):
        grad_fn = jax.value_and_grad(fyd.losses, argnums=1, has_aux=True)
        (_, (metrics, stats)), grads = grad_fn(model, state.params, state.batch_stats,
                                               bb_vars, batch, f.image_weight,
                                               f.pixel_factor, f.centre_weight)
        return state.apply_gradients(grads=grads, batch_stats=stats), metrics

    step = jax.jit(step, donate_argnums=0)
    start = int(state.epoch)
    with tqdm(total=f.epochs, initial=start, desc="fyd epochs", disable=not progress,
              leave=False) as bar:
        for epoch in range(start, f.epochs):
            perm = np.asarray(jax.random.permutation(jax.random.fold_in(data_key, epoch), n))
            sums = {}
            t0 = time.time()
            for s in range(steps_per_epoch):
                batch = jnp.asarray(images[perm[s * bs:(s + 1) * bs]])
                state, metrics = step(state, embedder.variables, batch)
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
            state = state.replace(epoch=jnp.asarray(epoch + 1, jnp.int32))
            entry = {"epoch": epoch + 1, "seconds": round(time.time() - t0, 2),
                     **{k: v / steps_per_epoch for k, v in sums.items()}}
            log.append(entry)
            bar.set_postfix(loss=f"{entry['loss']:.4f}", pixel=f"{entry['pixel']:.4f}",
                            fine=f"{entry['fine']:.4f}")
            bar.update(1)
            if (epoch + 1) % f.checkpoint_every == 0 or epoch + 1 == f.epochs:
                saved.save(epoch + 1, state, log)
    saved.close()
    return {"params": state.params, "batch_stats": state.batch_stats}
