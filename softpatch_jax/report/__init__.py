"""The report for people (DIR/report.html), built from the files runs leave on disk; above the
pipeline, so the pipeline never writes it: the commands do once a run is over (main.py,
experiments/). `runs` reads run folders (the one reader), `charts` draws SVG charts, `pages`
lays out the pages; what the report needs of the anomaly maps is written during the run by
io/assets.py."""
from softpatch_jax.report.pages import REPORT_FILE, write_report

__all__ = ["REPORT_FILE", "write_report"]
