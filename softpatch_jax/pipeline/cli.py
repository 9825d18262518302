"""The command-line boundary: bad input becomes one line on stderr and exit code 2, never a
traceback. `parse_flags` (given to `app.run`) turns flag and config-override errors into one line
naming the flag; `run_or_exit` does the same for errors raised by the run."""
import difflib
import importlib.util
import os
import sys

from absl import flags


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


def parse_flags(argv):
    """`app.run(main, flags_parser=parse_flags)`: parses the flags; a bad flag, a config file
    that does not load or an override of an unknown field is one line and exit code 2."""
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


def run_or_exit(fn, *args, **kwargs):
    """Calls fn; bad input (ValueError, OSError such as a missing file or an unwritable folder,
    ImportError) is printed as one line `error: ...` and the process exits with code 2;
    Ctrl-C exits with 130 without a traceback."""
    try:
        return fn(*args, **kwargs)
    except KeyboardInterrupt:
        print("interrupted; finished results are kept, rerun to continue", file=sys.stderr)
        sys.exit(130)
    except OSError as e:
        if e.filename and e.strerror:  # raised by the OS: name the path and what went wrong
            fail(f"{e.strerror}: {e.filename!r}; check the path and its permissions")
        fail(_one_line(e))
    except (ValueError, ImportError) as e:
        fail(_one_line(e))
