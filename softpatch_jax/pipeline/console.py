"""The console and DIR/run.log.

The console shows what a person needs: warnings and errors, one progress bar per stage (tqdm,
on stderr, cleared when the stage ends), one line per finished category or sweep point, and a
summary table at the end with the paths of report.html and run.log. Library INFO logging
(orbax's checkpoint chatter, absl, XLA's platform probing such as "Unable to initialize backend
'tpu'") reaches the console only with --verbosity=1 or higher (absl's flag; 2 adds DEBUG).

DIR/run.log gets every record at INFO and above (DEBUG too at --verbosity=2), ours and the
libraries', with times and sources, and the lines the console printed; each command appends a
header line. Records made before DIR exists are kept and written once it does, so a command
that fails its checks before creating DIR writes nothing; one that fails later leaves its error
in run.log.
"""
import datetime
import functools
import logging
import os
import sys
from typing import Dict, List, Optional, Sequence

from absl import logging as absl_logging
from tqdm.auto import tqdm

from softpatch_jax.io import report

LOG_FILE = "run.log"
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s %(filename)s:%(lineno)d] %(message)s"
# logging.info(..., extra=FILE_ONLY): into run.log, never onto the console (lines `say` printed).
FILE_ONLY = {"file_only": True}


def levels(verbosity: int):
    """absl --verbosity -> (console level, run.log level): WARNING and INFO by default (-1) and
    at 0, INFO and INFO at 1, DEBUG and DEBUG at 2 and above."""
    if verbosity >= 2:
        return logging.DEBUG, logging.DEBUG
    return (logging.INFO if verbosity >= 1 else logging.WARNING), logging.INFO


class RunLog(logging.Handler):
    """Appends every record it gets to DIR/run.log; records that come before DIR exists wait
    in memory and are written once it does (never, for an empty `workdir`: a bad flag)."""

    def __init__(self, workdir: str, level: int = logging.INFO):
        super().__init__(level)
        self.path = os.path.join(os.path.abspath(workdir), LOG_FILE) if workdir else ""
        self.setFormatter(logging.Formatter(FILE_FORMAT))
        self._file = None
        self._pending: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
            if self._file is None:
                if not self.path or not os.path.isdir(os.path.dirname(self.path)):
                    self._pending.append(line)
                    return
                self._file = open(self.path, "a", encoding="utf-8")
                self._file.writelines(self._pending)
                self._pending = []
            self._file.write(line)
            self._file.flush()
        except Exception:  # a log must never break the run
            self.handleError(record)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        super().close()


class ConsoleFormatter(logging.Formatter):
    """'warning: message' (the level in lower case, as the CLI's 'error: ...' lines)."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _not_file_only(record: logging.LogRecord) -> bool:
    return not getattr(record, "file_only", False)


def setup(workdir: str, verbosity: int = -1, command: Optional[Sequence[str]] = None) -> RunLog:
    """Routes logging as the module docstring says: replaces absl's stderr handler (and the
    handlers of an earlier `setup`) on the root logger by a console handler and a RunLog for
    `workdir`; Python warnings are logged (so they show, and reach run.log). -> the RunLog."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, (absl_logging.ABSLHandler, RunLog)) or getattr(h, "_console", False):
            root.removeHandler(h)
            if isinstance(h, RunLog):
                h.close()
    console_level, file_level = levels(verbosity)
    console = logging.StreamHandler(sys.stderr)
    console._console = True
    console.setLevel(console_level)
    console.setFormatter(ConsoleFormatter())
    console.addFilter(_not_file_only)
    run_log = RunLog(workdir, file_level)
    root.addHandler(console)
    root.addHandler(run_log)
    root.setLevel(min(console_level, file_level))
    absl_logging.get_absl_logger().setLevel(logging.NOTSET)  # orbax logs through absl
    logging.captureWarnings(True)
    when = datetime.datetime.now().isoformat(timespec="seconds")
    logging.info("==== %s: %s", when, " ".join(command if command is not None else sys.argv),
                 extra=FILE_ONLY)
    return run_log


def logged(fn):
    """fn, with an exception it raises also written to run.log (traceback included) before it
    propagates (the CLI then prints its one line)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BaseException as e:
            if not isinstance(e, SystemExit) or e.code not in (0, None):
                logging.error("the command failed: %s", e, exc_info=True, extra=FILE_ONLY)
            raise
    return run


def say(message: str) -> None:
    """A line for the person at the console (stdout, clear of progress bars), also in run.log."""
    tqdm.write(message, file=sys.stdout)
    logging.info("%s", message, extra=FILE_ONLY)


def headline(result: dict) -> str:
    """The figures of one result for a progress line: 'image AUROC 0.9408, pixel AUROC ...'."""
    names = (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO"))
    return ", ".join(f"{label} {report.fmt(result.get(k))}" for k, label in names
                     if result.get(k) is not None) or "no metric"


def summary_lines(results: Dict[str, dict], report_path: str = "",
                  log_path: str = "") -> List[str]:
    """The table that ends a fit: category, image AUROC, pixel AUROC, AUPRO (the estimated share
    of defective training images where the denoising estimated it) and seconds per
    category (a mean row, with the total seconds, when there are several), then the paths of
    the log and the report."""
    header = ["category", "image AUROC", "pixel AUROC", "AUPRO", "seconds"]
    keys = ("image_auroc", "pixel_auroc", "aupro")
    # how contaminated each pile looks, where the denoising estimated it
    estimated = any(r.get("contamination_images") is not None for r in results.values())
    if estimated:
        header.insert(4, "est. defective")
        keys += ("contamination_images",)
    rows = [[name] + [report.fmt(r.get(k)) for k in keys] + [_seconds(r.get("seconds"))]
            for name, r in results.items()]
    if len(results) > 1:
        total = sum(r.get("seconds") or 0.0 for r in results.values())
        rows.append(["mean"] + [report.fmt(report.mean(r.get(k) for r in results.values()))
                                for k in keys] + [f"{_seconds(total)} total"])
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    line = lambda row: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                 for i, (c, w) in enumerate(zip(row, widths))).rstrip()
    out = [line(header)] + [line(r) for r in rows]
    if log_path:
        out.append(f"log: {log_path}")
    if report_path:  # the last line: what to open next
        out.append(f"report: {report_path}")
    return out


def _seconds(v) -> str:
    return "-" if v is None else f"{float(v):.1f}"


def log_path(workdir: str) -> str:
    """DIR/run.log when this process writes one (after `setup`), else ''."""
    for h in logging.getLogger().handlers:
        if isinstance(h, RunLog) and h.path and h.path == os.path.join(os.path.abspath(workdir),
                                                                         LOG_FILE):
            return h.path
    return ""
