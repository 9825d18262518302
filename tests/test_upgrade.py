"""Configs stored by 0.2 (one flat `model` section) upgrade to today's sections exactly: the 0.2
default config becomes today's default field for field, every 0.2 field has one home, fields 0.2
configs lacked get the meaning 0.2 gave them, and flat result records and command-line names
follow the same table. (tests/pipeline/test_compat_0_2.py runs 0.2 itself, where git has it.)"""
import json
import os

import ml_collections
import pytest

from softpatch_jax import defaults, upgrade
from softpatch_jax.pipeline import provenance, validation

SNAPSHOT = os.path.join(os.path.dirname(__file__), "fixtures", "config_0.2.json")


def _config_0_2() -> dict:
    """softpatch_jax/defaults.py's get_config() with the sweep section, as 0.2 wrote it."""
    with open(SNAPSHOT) as f:
        return json.load(f)


def _today() -> dict:
    config = defaults.get_config()
    config.sweep = defaults.sweep_section()
    return config.to_dict()


def test_the_0_2_default_is_todays_default():
    old = _config_0_2()
    assert upgrade.is_legacy(old) and not upgrade.is_legacy(_today())
    assert upgrade.upgrade(old).to_dict() == _today()


def test_every_0_2_model_field_has_one_home_and_todays_shape_is_unchanged():
    old = _config_0_2()
    moved = {f"model.{k}" for k in old["model"]} - {"model.method", "model.blur_sigma"}
    assert moved == set(upgrade.RENAMED)
    assert len(set(upgrade.RENAMED.values())) == len(upgrade.RENAMED)
    flat_today = provenance.flatten(_today())
    assert all(new in flat_today for new in upgrade.RENAMED.values())
    assert upgrade.upgrade(_today()).to_dict() == _today()
    assert upgrade.upgrade(ml_collections.ConfigDict(_today())).to_dict() == _today()


def test_values_move_to_their_new_names():
    old = _config_0_2()
    old["model"].update(threshold=0.2, cls_threshold=0.1, seg_threshold=0.4, lof_k=4,
                        backbone="efficientnet_lite1", padim_dim=32, num_nn=3)
    new = upgrade.upgrade(old)
    assert (new.denoise.ratio, new.softpatch_plus.cls_ratio, new.softpatch_plus.seg_ratio,
            new.denoise.lof_k, new.backbone.name, new.padim.dim, new.bank.num_nn) == \
        (0.2, 0.1, 0.4, 4, "efficientnet_lite1", 32, 3)
    # and the model fields added since, with what a config without them meant (no prefilter)
    assert set(new.model.keys()) == {"method", "blur_sigma", "prefilter", "prefilter_share"}
    assert (new.model.prefilter, new.model.prefilter_share) == ("", "auto")
    validation.check_known_fields(new)


def test_fields_an_old_config_lacks_keep_the_meaning_0_2_gave_them():
    """A config stored before grouping and the SoftPatch+ variants existed meant position
    grouping, mean fusion, ...: what 0.2 read for them with `.get(field, default)`."""
    old = _config_0_2()
    for field in ("grouping", "group_radius", "fusion_rule", "fusion_weights", "rank_norm",
                  "soft_source", "shared_projection"):
        del old["model"][field]
    for field in ("exact_pruning", "multi_device", "compilation_cache"):
        del old["runtime"][field]
    new = upgrade.upgrade(old)
    assert (new.denoise.grouping, new.denoise.group_radius) == ("position", 2)
    assert (new.softpatch_plus.fusion_rule, new.softpatch_plus.rank_norm,
            new.softpatch_plus.soft_source, new.softpatch_plus.shared_projection) == \
        ("mean", "global", "first", True)
    assert new.runtime.exact_pruning and new.runtime.multi_device and \
        new.runtime.compilation_cache
    today = upgrade.upgrade(_today())  # today's config keeps its '' (the method's own)
    assert today.denoise.grouping == ""


def test_a_0_2_config_file_starting_from_todays_defaults():
    """`c = get_config(); c.model.threshold = 0.1` (a 0.2 file, run by 0.3): the 0.2 name wins
    over the default of its new one; set beside a new name of another value, it is refused."""
    config = defaults.get_config()
    config.model.threshold = 0.1
    config.model.lof_k = 6  # equal to the new field: nothing to choose
    new = upgrade.upgrade(config)
    assert new.denoise.ratio == 0.1 and "threshold" not in new.model
    config.denoise.ratio = 0.3
    with pytest.raises(ValueError, match=r"^config sets model.threshold=0.1 \(0.2's name\) and "
                                         r"denoise.ratio=0.3; keep only denoise.ratio$"):
        upgrade.upgrade(config)


def test_flat_records_and_command_line_names():
    assert upgrade.upgrade_flat({"model.threshold": 0.15, "model.method": "softpatch",
                                 "data.name": "elpv"}) == {
        "denoise.ratio": 0.15, "model.method": "softpatch", "data.name": "elpv",
        "data.tile": 0,  # added in 0.3.1: what a record without it meant
        "model.prefilter": "", "model.prefilter_share": "auto",  # added since: no prefilter
        # a section added whole (InReaCh's): its defaults, which no method it named read
        **{f"{section}.{k}": v for section in upgrade.ADDED_SECTIONS
           for k, v in defaults.get_config()[section].items()}}
    assert upgrade.renamed_override("model.grouping") == "denoise.grouping"
    assert upgrade.renamed_override("model.method") == ""


def test_a_record_from_before_a_section_was_added_has_no_differences():
    today = ml_collections.ConfigDict(_today())
    record = provenance.record(today, [])
    added = upgrade.ADDED_SECTIONS
    before = dict(record, config={k: v for k, v in record["config"].items()
                                  if k.split(".")[0] not in added})
    assert provenance.differences(before, record) == []
    old = upgrade.upgrade({k: v for k, v in today.to_dict().items() if k not in added})
    assert all(old[s].to_dict() == today[s].to_dict() for s in added)


def test_a_0_2_record_of_the_same_config_has_no_differences():
    today = ml_collections.ConfigDict(_today())
    record = provenance.record(today, [])
    inverse = {new: old for old, new in upgrade.RENAMED.items()}
    stored = dict(record, config={inverse.get(k, k): v for k, v in record["config"].items()})
    stored["config_fingerprint"] = "fingerprint of the 0.2 names"
    assert provenance.differences(stored, record) == []
    stored["config"]["model.threshold"] = 0.2
    assert provenance.differences(stored, record) == ["denoise.ratio: 0.2 -> 0.15"]
    assert provenance.differences(dict(stored, version="0.1.0"), record)[0] == \
        "results version 0.1.0 -> 0.2.0"


def test_a_record_from_before_tiling_and_a_stored_pair_are_the_same_config():
    """A result stored before data.tile existed, and one whose (height, width) JSON stored as a
    list, are recognised as computed from today's config."""
    config = ml_collections.ConfigDict(_today())
    upgraded = upgrade.upgrade(config)
    upgraded.data.image_size = (160, 48)  # a pair where the stored value was a number
    record = provenance.record(upgraded, [])
    assert record["config"]["data.image_size"] == [160, 48]
    stored = json.loads(json.dumps(record))
    del stored["config"]["data.tile"]
    assert provenance.differences(stored, record) == []
    stored["config"]["data.tile"] = [40, 48]
    assert provenance.differences(stored, record) == ["data.tile: [40, 48] -> 0"]
    before = _today()
    del before["data"]["tile"]
    assert upgrade.upgrade(before).data.tile == 0
