"""report/runs.py, the one reader of run folders: every file it reads may be absent, and the
pages and charts read nothing themselves."""
import ast
import os

from softpatch_jax.report import charts, pages, runs, write_report

from run_folders import category, fit_workdir, sweep_point  # noqa: F401 (category: fixture)


def test_absent_files_read_as_nothing(tmp_path):
    empty = str(tmp_path)
    assert runs.read_json(os.path.join(empty, "x.json")) is None
    assert runs.read_csv(os.path.join(empty, "x.csv")) is None
    assert runs.image_uri(os.path.join(empty, "x.png")) is None
    assert runs.fit_run(empty) == (None, {})
    assert runs.results_title(empty) is None and runs.predictions(empty) == []
    assert runs.scores(empty) is None and runs.threshold(empty, {}) is None
    assert runs.stored_threshold(empty) == {} and runs.injected(empty) == []
    assert runs.curves(empty) == {} and runs.gallery(empty) is None
    assert runs.audit(empty, "widget") == [] and runs.sweep_points(empty) == []
    assert runs.present(empty, ("a", "b")) == [] and not runs.is_sweep(empty)
    assert runs.prediction_image(empty, "a.png") is None
    assert os.path.isfile(write_report(empty))  # a page all the same


def test_a_fit_workdir_reads_back(tmp_path, category):
    folder = fit_workdir(str(tmp_path), category, threshold=1.9)
    config, results = runs.fit_run(str(tmp_path))
    assert config["model"]["method"] == "softpatch" and sorted(results) == ["bare", "widget"]
    assert runs.category_folder(str(tmp_path), "widget") == folder
    names, labels, _, scores = runs.scores(folder)
    samples, want, _, _ = category
    assert names == [s.name for s in samples] and labels.tolist() == [s.label for s in samples]
    assert scores.tolist() == [float(v) for v in want]
    assert runs.threshold(folder, {}) == 1.9 and runs.stored_threshold(folder)["source"]
    assert [r["rank"] for r in runs.audit(folder, "widget")] == ["1", "2", "3", "4"]
    assert runs.curves(folder)["image"]["n_pos"] == 6 and runs.gallery(folder)["masks"]
    assert runs.present(folder, ("scores.csv", "overlay.png", "result.json")) == [
        "scores.csv", "result.json"]
    assert runs.config_field({"a.b": 1}, "a.b") == 1  # flat, as results store it
    assert runs.config_field({"a": {"b": 2}}, "a.b") == 2 and runs.config_field({}, "a.b") is None
    assert runs.number("nan") is None and runs.number("2.5") == 2.5 and runs.number(None) is None


def test_sweep_points_in_order(tmp_path):
    w = str(tmp_path)
    for c, r, m in (("b", 0.1, "lof"), ("a", 0.1, "none"), ("a", 0.0, "none"), ("a", 0.1, "lof")):
        sweep_point(w, c, "overlap", r, m, 0.5)
    os.makedirs(os.path.join(w, "points", ".staging"))  # hidden folders are not points
    found = [(r["category"], r["ratio"], r["method"]) for _, r in runs.sweep_points(w)]
    assert found == [("a", 0.0, "none"), ("a", 0.1, "lof"), ("a", 0.1, "none"),
                     ("b", 0.1, "lof")]
    assert runs.is_sweep(w)


# What reads files or folders; the pages and charts leave it to `runs`.
READING = {"open", "listdir", "walk", "isfile", "isdir", "exists", "scandir", "glob",
           "read_json", "DictReader", "load", "b64encode"}


def _calls(module) -> set:
    """The names of the functions `module` calls, outside pages' `_write` (which writes)."""
    tree = ast.parse(open(module.__file__).read())
    skip = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name == "_write"
            for n in ast.walk(f)}
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and id(node) not in skip:
            f = node.func
            out.add(f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", ""))
    return out


def test_pages_and_charts_read_nothing_themselves():
    for module in (pages, charts):
        assert not _calls(module) & READING, (module.__name__, _calls(module) & READING)


def test_runs_written_by_0_2_read_with_todays_names(tmp_path):
    """A 0.2 fit's metrics.json (nested, flat model section) and sweep point (flat fields):
    the pages see today's names (KEY_FIELDS shows denoise.ratio)."""
    from softpatch_jax.files import write_json

    write_json(str(tmp_path / "metrics.json"), {
        "config": {"model": {"method": "softpatch", "threshold": 0.2, "backbone": "x"}},
        "categories": {}})
    config, _ = runs.fit_run(str(tmp_path))
    assert config["denoise"]["ratio"] == 0.2 and config["backbone"]["name"] == "x"
    assert "<code>denoise.ratio</code>" in pages._config_section(config)
    point = tmp_path / "sweep" / "points" / "widget" / "overlap" / "ratio0.1_lof"
    point.mkdir(parents=True)
    write_json(str(point / "result.json"), {"category": "widget", "config": {
        "model.threshold": 0.2, "model.discriminator": "lof"}})
    [(_, result)] = runs.sweep_points(str(tmp_path / "sweep"))
    assert result["config"] == {"denoise.ratio": 0.2, "denoise.discriminator": "lof"}
