"""A run's workdir: usable before any work, and used by one run at a time.

`claim(workdir)` is the first thing an entry point does with its workdir (`cfimage.train`,
`cfimage.diagnose`, `cfimage.experiment`, `cfimage.coldstart`). It

* creates the directory and writes a probe into it, so that a workdir that is a regular
  file, a read-only directory or a full disk stops the run with one `UserError` line before
  anything is computed;
* takes `<workdir>/cfimage.lock`: an exclusive `fcntl.flock` on that file, held until the
  process ends. The file holds the owner's process id, host, start time and command, for the
  message a second run gets. The kernel drops a flock when its process dies however it dies,
  so a lock file left by a killed run is stale by definition (never mistaken for a live
  owner after its pid was reused); the next run takes it over and logs whose it was.

A process that claims the same workdir twice (tests calling `main` in-process) gets the lock
it already holds. Each worker of a multi-worker run locks its own file (`cfimage.lock` for
the chief, `cfimage-<task>-<index>.lock` for the others: they share the workdir by design).
"""

import atexit
import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import time

from cfimage.errors import UserError

LOCK_NAME = "cfimage.lock"
LOW_SPACE_BYTES = 512 * 2**20  # below this much free space a warning is logged

_held = {}  # lock path -> (open file descriptor, pid of the process that took it)


def claim(workdir, log=print, multi_worker=False):
    """Makes `workdir` (creating it), checks it can be written, and locks it for this process.

    Raises UserError when the workdir is unusable or another live process holds it. Returns
    the lock file's path (None for a remote workdir such as gs://, which is not locked).
    """
    if "://" in str(workdir):
        log(f"workdir {workdir} is remote: not locked against a second run")
        return None
    workdir = os.path.abspath(workdir)
    _make_usable(workdir, log)
    path = os.path.join(workdir, _lock_name(multi_worker))
    if path not in _held or _held[path][1] != os.getpid():
        _held[path] = (_lock(path, log), os.getpid())
    return path


def release(workdir, multi_worker=False):
    """Releases this process's lock on `workdir` (it is released at exit anyway)."""
    _release(os.path.join(os.path.abspath(workdir), _lock_name(multi_worker)))


def _release(path):
    fd, pid = _held.pop(path, (None, None))
    if fd is None or pid != os.getpid():  # a forked child does not own its parent's lock
        return
    try:
        os.unlink(path)  # before unlocking: see _lock for the inode check
    except OSError:
        pass
    os.close(fd)


@atexit.register
def _release_all():
    for path in list(_held):
        _release(path)


def describe_owner(path):
    """The owner recorded in the lock file `path`, in words ('' when none is recorded)."""
    try:
        with open(path, encoding="utf-8") as f:
            owner = json.load(f)
    except (OSError, ValueError):
        return ""
    if not isinstance(owner, dict):
        return ""
    command = owner.get("command") or "?"
    return (f"process {owner.get('pid', '?')} on host {owner.get('host', '?')}, started "
            f"{owner.get('started', '?')} ({command})")


def _lock_name(multi_worker):
    if not multi_worker:
        return LOCK_NAME
    try:
        tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
        task, cluster = tf_config.get("task") or {}, tf_config.get("cluster") or {}
        kind, index = task.get("type"), int(task.get("index", 0))
    except (ValueError, TypeError, AttributeError) as error:
        raise UserError(f"TF_CONFIG is not valid: {error}; it needs a \"task\" with a "
                        "\"type\" and an \"index\" (see docs/scaling.md)") from None
    # The chief (distribute.is_chief's rule: "chief", or worker 0 when there is none) takes
    # the workdir's own lock, which a single-process run on the same workdir also takes.
    chief = kind in (None, "chief") or (kind == "worker" and index == 0
                                        and "chief" not in cluster)
    return LOCK_NAME if chief else f"cfimage-{kind}-{index}.lock"


def _make_usable(workdir, log):
    flag = f"--workdir={workdir}"
    if os.path.lexists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"{flag}: exists and is not a directory; give a directory (new or "
                        "the workdir of an earlier run)")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as error:
        raise UserError(f"{flag}: cannot be created ({_reason(error)}); give a directory "
                        "you can write to") from None
    probe = os.path.join(workdir, f".probe-{os.getpid()}")
    try:
        with open(probe, "wb") as f:  # a real write: a read-only or full disk fails here
            f.write(b"cfimage workdir probe\n" * 512)
            f.flush()
            os.fsync(f.fileno())
    except OSError as error:
        raise UserError(f"{flag}: cannot write into it ({_reason(error)}); give a directory "
                        "you can write to, on a disk with free space") from None
    finally:
        if os.path.exists(probe):
            os.remove(probe)
    free = shutil.disk_usage(workdir).free
    if free < LOW_SPACE_BYTES:
        log(f"warning: {flag} has only {free / 2**20:.0f} MiB free; a run writes "
            "checkpoints, TensorBoard logs and backups there")


def _reason(error):
    if error.errno == errno.ENOSPC:
        return "no space left on the device"
    if error.errno == errno.EROFS:
        return "read-only file system"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if error.errno in (errno.EEXIST, errno.ENOTDIR):
        return f"a part of the path is a file: {error.filename or error}"
    return error.strerror or str(error)


def _command():
    """This process's command line, shortened to fit a one-line message."""
    program = sys.argv[0] if sys.argv and sys.argv[0] else "python"
    if program.endswith(".py") and os.path.basename(os.path.dirname(program)) == "cfimage":
        program = f"python -m cfimage.{os.path.basename(program)[:-3]}"  # python -m cfimage.x
    text = " ".join([os.path.basename(program) if "-m" not in program else program,
                     *sys.argv[1:]])
    return text if len(text) <= 200 else text[:197] + "..."


def _lock(path, log):
    """An open descriptor of `path`, exclusively flock-ed; UserError when another holds it."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise UserError(f"--workdir={os.path.dirname(path)}: cannot create its lock file "
                            f"{path} ({_reason(error)})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = describe_owner(path) or "another process (no owner recorded yet)"
            os.close(fd)
            raise UserError(
                f"--workdir={os.path.dirname(path)} is in use by {owner}. Wait for that run "
                f"to finish or stop it, or give another --workdir (lock file: {path})."
            ) from None
        except OSError as error:  # a file system without flock (ENOLCK, EOPNOTSUPP)
            log(f"warning: cannot lock {path} ({_reason(error)}); a second run on this "
                "workdir will not be refused")
            return fd
        # A releasing owner unlinks the file before unlocking: if we locked a file that is
        # no longer at `path`, another process may lock the new one. Start again.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    previous = describe_owner(path)
    if previous:
        log(f"workdir: took over the stale lock of {previous}: that run ended without "
            "releasing it (killed?)")
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                         "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                         "command": _command()})
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode("utf-8"), 0)
        os.fsync(fd)
    except OSError as error:
        os.close(fd)
        raise UserError(f"--workdir={os.path.dirname(path)}: cannot write its lock file "
                        f"{path} ({_reason(error)})") from None
    return fd
