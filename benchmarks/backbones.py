"""Feature-extraction throughput at 224 px: our jitted Flax backbones against the same PyTorch
models on the same inputs (CPU here; any JAX device). Prints images/s and the ratio.

python -m benchmarks.backbones [--batch 8] [--repeats 3] [--backbones a,b]
"""
import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from softpatch_jax.features.backbones import build_backbone
from softpatch_jax.settings import comma_list

TAPS = {"efficientnet_lite0": ("stage3", "stage5"), "efficientnet_lite1": ("stage3", "stage5"),
        "efficientnet_lite2": ("stage3", "stage5"), "resnet18": ("layer2", "layer3"),
        "wide_resnet50_2": ("layer2", "layer3")}


def _time(fn, repeats):
    fn()  # warm-up (includes compilation for JAX)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def torch_model(name):
    import torch

    from softpatch_jax.features.backbones import packaged_weights
    from tests.torch_reference import backbones as torch_reference

    if name.startswith("efficientnet"):
        model = torch_reference.efficientnet_lite(name, packaged_weights(name))
        hooks = torch_reference.efficientnet_tap_hooks(model, name, TAPS[name])
        last = max(int(t[-1]) for t in TAPS[name])  # stop after the last tap, as ours does
        from softpatch_jax.features.backbones.efficientnet_lite import tap_block_index
        stop = tap_block_index(name, f"stage{last}")

        def run(x):
            y = model._swish(model._bn0(model._conv_stem(x)))
            for block in model._blocks[:stop + 1]:
                y = block(y)
            return dict(hooks)
        return run
    model = torch_reference.TorchResNet(name).eval()
    torch.manual_seed(0)
    return lambda x: model.features(x, TAPS[name])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backbones", default=",".join(TAPS))
    args = ap.parse_args()
    x = np.random.default_rng(0).normal(size=(args.batch, 224, 224, 3)).astype(np.float32)
    print(f"device: {jax.devices()[0].platform}, batch {args.batch}, 224 px, median of "
          f"{args.repeats}")
    print("| backbone | ours img/s | torch img/s | ratio |")
    print("|---|---|---|---|")
    for name in comma_list(args.backbones):
        weights = "" if name.startswith("efficientnet") else "random"
        module, variables = build_backbone(name, TAPS[name], weights)
        fn = jax.jit(module.apply)
        xj = jnp.asarray(x)
        ours = _time(lambda: jax.block_until_ready(fn(variables, xj)), args.repeats)
        try:
            import torch
            torch.set_num_threads(max(1, torch.get_num_threads()))
            run = torch_model(name)
            xt = torch.tensor(x.transpose(0, 3, 1, 2))
            with torch.no_grad():
                ref = _time(lambda: run(xt), args.repeats)
            ref_s, ratio = f"{args.batch / ref:.1f}", f"{ref / ours:.2f}x"
        except ImportError:
            ref_s, ratio = "n/a (no torch)", "-"
        print(f"| {name} | {args.batch / ours:.1f} | {ref_s} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
