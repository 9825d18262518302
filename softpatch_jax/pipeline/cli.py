"""The command-line boundary: bad input becomes one line on stderr and exit code 2, never a
traceback. `parse_flags` (given to `app.run`) turns flag and config-override errors into one line
naming the flag; `run_or_exit` does the same for errors raised by the run, and makes SIGTERM and
Ctrl-C end the run promptly with one line (exit codes 143 and 130).

A run stopped that way unwinds like a failed one (staging folders removed, the lock released,
finished categories and sweep points kept). When the signal arrives while the main thread is
inside a long native call (an XLA computation), Python cannot unwind until the call returns; a
watcher thread, woken by the signal through `signal.set_wakeup_fd`, then ends the process after
`GRACE_S` seconds, leaving only what a SIGKILL leaves: a staging folder named by a dead pid,
which the next run removes.
"""
import contextlib
import difflib
import importlib.util
import logging
import os
import signal
import socket
import sys
import threading

from absl import flags

from softpatch_jax import upgrade


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _config_file(argv, name: str = "config") -> str:
    for i, arg in enumerate(argv):
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return ""


def _load_config(path: str):
    """The config a config file defines (its `get_config()`), or None if it cannot be loaded."""
    path, _, arg = path.partition(":")
    try:
        spec = importlib.util.spec_from_file_location("config_under_check", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.get_config(arg) if arg else module.get_config()
    except Exception:
        return None


def unknown_override(argv, name: str = "config") -> str:
    """The first `--config.a.b=v` override of `argv` that names no field of the config file's
    config, as a message with the known fields and the closest match; '' if none does."""
    config = _load_config(_config_file(argv, name))
    if config is None:
        return ""
    for arg in argv:
        if not arg.startswith(f"--{name}."):
            continue
        dotted = arg[len(name) + 3:].split("=", 1)[0]
        node, parts = config, dotted.split(".")
        for i, part in enumerate(parts):
            keys = list(node.keys()) if hasattr(node, "keys") else []
            if part not in keys:
                where = ".".join([name] + parts[:i])
                close = difflib.get_close_matches(part, keys, n=1)
                hint = f"did you mean --{where}.{close[0]}? " if close else ""
                return (f"--{name}.{dotted}: {where} has no field {part!r}; {hint}fields of "
                        f"{where}: {', '.join(sorted(keys)) or 'none'}")
            node = node[part]
    return ""


def renamed_overrides(argv, name: str = "config") -> list:
    """`argv` with overrides of fields 0.2 named otherwise (`--config.model.threshold=0.2`) under
    today's names (`--config.denoise.ratio=0.2`), each with a note on stderr; unchanged where
    the config file itself holds the field (a file in 0.2's shape, upgraded after the
    overrides: softpatch_jax/upgrade.py)."""
    out, config = [], None
    for arg in argv:
        flag, sep, value = arg.partition("=")
        new = upgrade.renamed_override(flag[len(name) + 3:]) if flag.startswith(
            f"--{name}.model.") else ""
        if new:
            config = _load_config(_config_file(argv, name)) if config is None else config
            field = flag[len(name) + 9:]
            if config is not None and field not in config.get("model", {}):
                print(f"note: {flag} is 0.2's name of --{name}.{new}; read as that",
                      file=sys.stderr)
                arg = f"--{name}.{new}{sep}{value}"
        out.append(arg)
    return out


def parse_flags(argv):
    """`app.run(main, flags_parser=parse_flags)`: parses the flags; a bad flag, a config file
    that does not load or an override of an unknown field is one line and exit code 2. 0.2's
    names of renamed fields are read as today's (`renamed_overrides`)."""
    argv = renamed_overrides(argv)
    if argv[1:] != sys.argv[1:]:
        sys.argv[:] = argv  # ml_collections' config_flags reads the overrides from sys.argv
    try:
        rest = flags.FLAGS(argv)
        config = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
        if config is not None:
            config.keys()  # a config that failed to load raises on first use: here, not later
        return rest
    except flags.Error as e:
        fail(f"{_one_line(e)}; see --helpshort")
    except Exception as e:  # raised by ml_collections while loading or overriding the config
        path = _config_file(argv)
        if path and not os.path.isfile(path.partition(":")[0]):
            fail(f"--config={path!r} does not exist; give a config file such as "
                  "configs/default.py")
        if not path and "empty" in str(e):
            fail("--config is empty; give a config file such as configs/default.py")
        fail(unknown_override(argv) or f"cannot load the config: {_one_line(e)[:300]}")


GRACE_S = 3.0  # seconds a stopped run may take to unwind before it is ended at once
REDELIVER_S = 0.05  # seconds after a swallowed stop before it is delivered again
_STOPPED = {signal.SIGTERM: ("terminated", 143), signal.SIGINT: ("interrupted", 130)}


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM (a BaseException: `except Exception` lets it by)."""


_RAISED = {signal.SIGTERM: Terminated, signal.SIGINT: KeyboardInterrupt}


def _stopped_line(what: str) -> str:
    return f"{what}; finished results are kept, rerun to continue"


@contextlib.contextmanager
def stop_promptly(grace_s: float = GRACE_S):
    """For the block: SIGTERM raises Terminated and Ctrl-C KeyboardInterrupt in the main thread,
    and a SIGTERM or SIGINT that the main thread does not act on within `grace_s` (it is inside
    native code) ends the process with the one line and its exit code. Outside the main thread:
    nothing.

    Python swallows an exception raised where it cannot propagate (a gc callback such as JAX's,
    a `__del__`) and prints "Exception ignored" with a traceback; a stop raised there is kept
    quiet and delivered again `REDELIVER_S` later. A stop that the block still swallows (its
    own `except BaseException`) ends the process with the line once the block returns: a stop
    is never lost. A second stop while the first unwinds is not raised (it would cut the
    cleanups short: staging folders, the lock); the grace still bounds the unwinding."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wake_r, wake_w = socket.socketpair()
    wake_w.setblocking(False)
    finished = threading.Event()
    requested = []  # the stop signals received, in order
    redeliveries = []  # timers delivering a swallowed stop again

    def watch():
        while True:
            got = wake_r.recv(64)  # a byte per signal: its number
            if not got or finished.is_set():
                return
            for signum in got:
                if signum in _STOPPED and not finished.wait(grace_s):
                    what, code = _STOPPED[signum]
                    print(_stopped_line(what), file=sys.stderr, flush=True)
                    os._exit(code)

    unwinding = [0]  # stops raised and not swallowed: on their way out through the cleanups

    def raise_stop(signum, frame):
        requested.append(signum)
        if unwinding[0]:  # a stop is already unwinding: its cleanups are not cut short
            return
        unwinding[0] += 1
        raise _RAISED[signum]()

    previous_hook = sys.unraisablehook

    def quiet_if_stop(unraisable):
        stop = next((s for s, e in _RAISED.items() if isinstance(unraisable.exc_value, e)), None)
        if stop is None or stop not in requested:
            return previous_hook(unraisable)
        unwinding[0] -= 1
        # Delivered again from another thread, once the main thread has left the callback (a
        # raise inside this hook would be swallowed too); a real signal also wakes a sleep.
        again = threading.Timer(REDELIVER_S, signal.pthread_kill,
                                (threading.main_thread().ident, stop))
        again.daemon = True
        redeliveries.append(again)
        again.start()

    # Ctrl-C keeps an ignoring handler (a job started in the background ignores SIGINT)
    stops = [s for s in _RAISED
             if s == signal.SIGTERM or signal.getsignal(s) is signal.default_int_handler]
    previous_fd = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    previous_handlers = {s: signal.signal(s, raise_stop) for s in stops}
    sys.unraisablehook = quiet_if_stop
    watcher = threading.Thread(target=watch, name="stop-watcher", daemon=True)
    watcher.start()
    try:
        yield
        if requested:  # raised and swallowed on the way: the run still ends as stopped
            _end_now(*_STOPPED[requested[0]])
    finally:
        finished.set()
        for again in redeliveries:
            again.cancel()
        sys.unraisablehook = previous_hook
        for s, handler in previous_handlers.items():
            signal.signal(s, handler)
        signal.set_wakeup_fd(previous_fd)
        wake_w.close()  # the watcher's recv returns b"": it ends
        watcher.join(1.0)
        wake_r.close()


def _end_now(what: str, code: int):
    """Ends a stopped run once its `finally` blocks have run (staging removed, lock released):
    without interpreter finalisation, which can crash while XLA's threads are still busy with
    the computation the signal interrupted (seen as a segfault after the line)."""
    print(_stopped_line(what), file=sys.stderr)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_or_exit(fn, *args, **kwargs):
    """Calls fn; bad input (ValueError, OSError such as a missing file or an unwritable folder,
    ImportError) is printed as one line `error: ...` and the process exits with code 2;
    SIGTERM exits with 143 and Ctrl-C with 130, promptly, with one line and no traceback."""
    with stop_promptly():
        return _run_or_fail(fn, *args, **kwargs)


def _run_or_fail(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Terminated:
        _end_now("terminated", 143)
    except KeyboardInterrupt:
        _end_now("interrupted", 130)
    except OSError as e:
        if e.filename and e.strerror:  # raised by the OS: name the path and what went wrong
            fail(f"{e.strerror}: {e.filename!r}; check the path and its permissions")
        fail(_one_line(e))
    except (ValueError, ImportError) as e:
        fail(_one_line(e))
