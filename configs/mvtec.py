"""SoftPatch-LOF on MVTec-format folders, the full category (no caps), the official protocol.

python -m softpatch_jax.main --config=configs/mvtec.py \
    --config.data.root=../shared/data/mvtec_ad --config.data.category=transistor --workdir=DIR
"""
from configs import default


def get_config():
    config = default.get_config()
    config.data.name = "mvtec"
    config.data.root = "../shared/data/mvtec_ad"
    config.data.category = "all"
    config.data.max_train = 0
    config.data.max_test = 0
    return config
