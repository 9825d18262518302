"""Config files are as strict as flags: a field set inside a config file (or a sweep or study
config) that does not exist is one line naming it and the closest real field, before anything
is computed or written; every config we ship passes."""
import glob
import os
import subprocess
import sys
import textwrap

import ml_collections
import pytest

from softpatch_jax import defaults, methods
from softpatch_jax.methods.base import Method
from softpatch_jax.pipeline import sweep, validation

from conftest import REPO, load_config


@pytest.mark.parametrize("path", sorted(
    os.path.relpath(p, os.path.join(REPO, "configs"))
    for p in glob.glob(os.path.join(REPO, "configs", "**", "*.py"), recursive=True)
    if not p.endswith("__init__.py")))
def test_every_shipped_config_has_only_known_fields(path):
    config = load_config(path)
    if "datasets" in config.get("sweep", {}):  # the alignment study: checked by its driver
        from experiments import alignment_study

        alignment_study.check_study_fields(config)
    else:
        validation.check_known_fields(config)


@pytest.mark.parametrize("section, field, closest", [
    ("denoise", "ratoi", "denoise.ratio"),
    ("data", "imagesize", "data.image_size"),
    ("runtime", "memory_budget", "runtime.memory_budget_mb"),
    ("fyd", "epoch", "fyd.epochs"),
])
def test_a_misspelt_field_names_itself_and_the_closest(section, field, closest):
    config = defaults.get_config()
    config[section][field] = 1
    with pytest.raises(ValueError) as e:
        validation.check_config(config)
    message = str(e.value)
    assert message.startswith(f"config field {section}.{field} does not exist")
    assert f"did you mean {closest}?" in message and "\n" not in message


def test_a_misspelt_section_and_a_section_for_a_value():
    config = defaults.get_config()
    config.modle = ml_collections.ConfigDict({"method": "patchcore"})
    with pytest.raises(ValueError, match="config field modle does not exist; did you mean model"):
        validation.check_known_fields(config)
    fields = defaults.get_config().to_dict()
    fields["denoise"]["ratio"] = {"value": 0.1}
    config = ml_collections.ConfigDict(fields)
    with pytest.raises(ValueError, match="denoise.ratio must be a value"):
        validation.check_known_fields(config)


def test_without_a_close_field_the_section_is_listed():
    config = defaults.get_config()
    config.audit.zzzz = 1
    with pytest.raises(ValueError, match="fields of audit: contamination, enabled, lof_pass"):
        validation.check_known_fields(config)


def test_a_method_declares_its_own_fields(monkeypatch):
    class WithRadius(Method):
        name = "test_with_radius"
        config_fields = {"model": {"ring_radius": 2}, "ring": {"width": 1}}

    monkeypatch.setattr(methods.registry, "_METHODS", dict(methods.registry._METHODS))
    methods.register(WithRadius)
    config = defaults.get_config()
    config.model.ring_radius = 3
    config.ring = ml_collections.ConfigDict({"width": 2})
    validation.check_known_fields(config)
    config.ring.widht = 2
    with pytest.raises(ValueError, match="ring.widht does not exist; did you mean ring.width"):
        validation.check_known_fields(config)


def test_a_sweep_config_with_a_misspelt_field_writes_nothing(tmp_path, mvtec_root):
    config = load_config("sweeps/noise.py")
    config.data.root, config.data.category = mvtec_root, "widget"
    config.sweep.ratio = "0,0.1"
    workdir = tmp_path / "sweep"
    with pytest.raises(ValueError, match="sweep.ratio does not exist; did you mean sweep.ratios"):
        sweep.run_sweep(config, str(workdir))
    assert not workdir.exists()


def test_a_study_config_with_a_misspelt_field_is_refused():
    from experiments import alignment_study

    config = load_config("sweeps/alignment.py")
    config.sweep.data.fryum.max_trian = 5
    with pytest.raises(ValueError, match="sweep.data.fryum.max_trian does not exist; did you "
                                         "mean sweep.data.fryum.max_train"):
        alignment_study.check_study_fields(config)
    config = load_config("sweeps/alignment.py")  # a dataset of one's own is welcome
    config.sweep.data.mine = ml_collections.ConfigDict(dict(
        name="folder", root="x", category="y", max_train=0, max_test=0))
    alignment_study.check_study_fields(config)


@pytest.mark.slow
def test_a_misspelt_field_in_a_config_file_is_one_line_at_the_command_line(tmp_path):
    config_file = tmp_path / "mine.py"
    config_file.write_text(textwrap.dedent("""
        from configs import default

        def get_config():
            config = default.get_config()
            config.model.coreset_ration = 0.05
            return config
    """))
    workdir = tmp_path / "w"
    done = subprocess.run([sys.executable, "-m", "softpatch_jax.main", f"--config={config_file}",
                           f"--workdir={workdir}"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=REPO))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "error: config field model.coreset_ration does not exist; did you mean "
        "bank.coreset_ratio? (softpatch_jax/defaults.py says what each field does)")
    assert not workdir.exists()


def test_0_2_names_on_the_command_line_are_read_as_todays(capsys):
    """--config.model.threshold=0.2 (0.2's name) is read as --config.denoise.ratio=0.2 with a
    note; a field the config file holds under that name (a file in 0.2's shape) is kept."""
    from softpatch_jax.pipeline import cli

    config = os.path.join(REPO, "configs", "default.py")
    argv = ["main", f"--config={config}", "--config.model.threshold=0.2",
            "--config.model.method=padim", "--config.model.lof_k", "5"]
    assert cli.renamed_overrides(argv) == [
        "main", f"--config={config}", "--config.denoise.ratio=0.2", "--config.model.method=padim",
        "--config.denoise.lof_k", "5"]
    err = capsys.readouterr().err
    assert "note: --config.model.threshold is 0.2's name of --config.denoise.ratio" in err
    old_file = os.path.join(REPO, "tests", "fixtures", "config_0_2_file.py")
    argv = ["main", f"--config={old_file}", "--config.model.threshold=0.2"]
    assert cli.renamed_overrides(argv) == argv
