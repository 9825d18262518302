"""The command-line boundary: bad input becomes one line on stderr and exit code 2."""
import sys


def run_or_exit(fn, *args, **kwargs):
    """Calls fn; a ValueError, FileNotFoundError or ImportError (bad input: the message names the
    problem and the fix) is printed as `error: ...` and the process exits with code 2."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
