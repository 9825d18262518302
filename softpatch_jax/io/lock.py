"""A workdir lock: one fit at a time, any number of sweep shards, predictions and exports.

`DIR/.lock` is held with `flock`: exclusively by a fit (which writes its pid, host and start time
into it), shared by sweep shards (`--shard=i/n` processes work together on one folder), predict
and export. The kernel releases the lock when its holder dies however it dies (SIGKILL included),
so a lock is never stale while its file can be; a fit that finds the pid of a process that is no
longer running takes the lock over with a note. The holder removes the file when it lets go
(only while no other holder shares it), so a run leaves the workdir as it found it.
"""
import contextlib
import datetime
import fcntl
import json
import logging
import os
import socket

LOCK_FILE = ".lock"


class WorkdirBusy(ValueError):
    """Another process holds the workdir's lock (a ValueError: one line at the command line)."""


def _holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        return json.loads(os.read(fd, 4096).decode() or "{}")
    except ValueError:  # half-written by a killed holder, or not ours
        return {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _describe(holder: dict) -> str:
    if not holder.get("pid"):
        return "a sweep, prediction or export"
    return (f"a {holder.get('kind', 'fit')} (pid {holder['pid']} on {holder.get('host', '?')}, "
            f"since {holder.get('started', '?')})")


def _open_locked(path: str, shared: bool) -> int:
    """Opens and flocks `path` -> its descriptor; raises WorkdirBusy if another process holds
    it in a conflicting mode. Retries when the file was removed or replaced between the open
    and the flock (a holder letting go), so the lock taken is the one on the path."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise WorkdirBusy(holder) from None
        try:
            same = os.path.samestat(os.stat(path), os.fstat(fd))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def workdir_lock(workdir: str, kind: str = "fit", shared: bool = False):
    """Holds DIR/.lock for the block: exclusive for a fit, `shared` for sweep shards, predict
    and export. Raises WorkdirBusy (one line naming the holder and the fix) if it is taken."""
    path = os.path.join(workdir, LOCK_FILE)
    try:
        fd = _open_locked(path, shared)
    except WorkdirBusy as e:
        holder = e.args[0]
        raise WorkdirBusy(
            f"{os.path.abspath(workdir)!r} is in use by {_describe(holder)}; wait for it to "
            f"finish or choose another --workdir"
            + ("" if shared else " (sweep shards share a folder; fits do not)")) from None
    try:
        if not shared:
            previous = _holder(fd)
            pid = previous.get("pid")
            if pid and pid != os.getpid() and not _alive(pid):
                logging.warning("taking over the lock of %s left by pid %s (%s), which is no "
                                "longer running", workdir, pid, previous.get("kind", "fit"))
            record = {"pid": os.getpid(), "host": socket.gethostname(), "kind": kind,
                      "started": datetime.datetime.now().isoformat(timespec="seconds")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
        yield path
    finally:
        try:  # remove the file only when no one shares it: an exclusive hold proves that
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.remove(path)
        except (BlockingIOError, FileNotFoundError):
            pass
        os.close(fd)
