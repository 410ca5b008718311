"""Output files that appear whole or not at all, and output locations checked before any work.

A writer gets a temporary name in the destination folder (same disk, so the
final rename is atomic). When it returns, the temporary file is flushed to the
disk (fsync), must exist and be non-empty, and the caller's ``verify`` reads it
back; only then is it renamed over the destination and the folder synced. On
any error, and on a stop request (see interrupts.py), the temporary file and
every scratch file or folder named after it are removed, and the message says
what went wrong and that nothing was written. A process killed outright
(SIGKILL, a power cut) cannot clean up: its temporary files carry this host's
name and the writer's process id, and the next write into the folder removes
those of this host whose process is gone. Standard library only.
"""

import contextlib
import os
import re
import shutil
import socket
import stat
import time
import uuid
from typing import Callable, Optional

from .errors import InputError
from .interrupts import stopsDeferred

TEMPORARY_PREFIX = "medsam-partial-"
#: A temporary name: prefix, host tag, process id, random part (then Slicer's scratch suffixes or the extension).
_TEMPORARY_NAME = re.compile(re.escape(TEMPORARY_PREFIX) + r"([A-Za-z0-9]+)-(\d+)-([0-9a-f]{12})")
#: A disk with less free space than this after a failed write is reported as full.
FULL_DISK_BYTES = 1 << 20
#: Test hook: seconds to hold a written temporary file before it is verified and renamed, so that a test can
#: send a signal to a real process while its output is half-way (Testing/test_writes.py). Unset in normal use.
HOLD_ENV = "MEDSAM_SLICER_TEST_HOLD_WRITE_S"
DEFAULT_NAME_MAX = 255


def checkOutputLocation(path, what: str = "output") -> str:
    """Check, before any work, that ``path`` can be written as a new file; create its folder if missing.

    Refuses a folder, an existing non-regular file (FIFO, device, socket), a
    name longer than the disk allows, and a folder where no file of that name
    length can be created (read-only disk, no permission). Returns the absolute
    path. Raises InputError naming the problem; ``what`` names the file in it.
    """
    path = os.path.abspath(os.fspath(path))
    name, folder = os.path.basename(path), os.path.dirname(path)
    if os.path.isdir(path):
        raise InputError(f"the {what} {path} is a folder: give a file name in it, e.g. {os.path.join(path, 'result.seg.nrrd')}.")
    if os.path.lexists(path) and not stat.S_ISREG(os.stat(path).st_mode):
        raise InputError(f"the {what} {path} exists and is not a regular file (a pipe, device or socket): "
                         "give the name of a new or ordinary file.")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create the {what} folder {folder} ({error.strerror}): choose another location.") from None
    nameMax = _pathconf(folder, "PC_NAME_MAX", DEFAULT_NAME_MAX)
    if len(os.fsencode(name)) > nameMax:
        raise InputError(f"the {what} name {name[:40]}... is {len(os.fsencode(name))} bytes long; the disk holding "
                         f"{folder} allows at most {nameMax}: choose a shorter name.")
    _probeFolder(folder, len(os.fsencode(name)), what)
    return path


def _pathconf(folder, name, default):
    try:
        return int(os.pathconf(folder, name))
    except (AttributeError, OSError, ValueError):  # not on Windows; some file systems do not say
        return default


def _probeFolder(folder, nameLength, what):
    """Create and remove a file with a name as long as the output's: the only sure test that the file can be made."""
    stem = f".{TEMPORARY_PREFIX}probe-{uuid.uuid4().hex}"
    probe = os.path.join(folder, stem + "x" * max(0, nameLength - len(stem)))
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.remove(probe)
    except OSError as error:
        raise InputError(f"cannot write a file in the {what} folder {folder} ({error.strerror}): choose another "
                         "location.") from None


def writeFailure(path, reason: str) -> InputError:
    """The InputError for a write of ``path`` that failed for ``reason``; says when the disk is full."""
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    try:
        usage = shutil.disk_usage(folder)
        full = usage.free < FULL_DISK_BYTES
    except OSError:
        full = False
    where = f"; the disk holding {folder} is full" if full else ""
    return InputError(f"writing {os.path.basename(path)} failed ({reason}{where}); nothing was written: "
                      "free some disk space or choose another location.")


@contextlib.contextmanager
def atomicOutput(path, verify: Optional[Callable[[str], None]] = None):
    """Yield a temporary file name beside ``path`` (same extension); put the file in place once it is verified.

    After the block: fsync, existence and size checked, ``verify(temporaryPath)``
    (raise InputError when the file read back is wrong), then an atomic rename
    and a sync of the folder. On any error or stop request the temporary file
    and its scratch files are removed and ``path`` is left as it was. Raises
    InputError (folder not writable, write failed, disk full).
    """
    path = checkOutputLocation(path)
    folder = os.path.dirname(path)
    removeStaleLeftovers(folder)
    stem = f"{TEMPORARY_PREFIX}{hostTag()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    # A name without a leading dot: Slicer's volume writer names its scratch folder after the part before the
    # first dot ("TempWrite" + stem), so the stem must be unique for two writes in one folder not to collide.
    temporaryPath = os.path.join(folder, stem + lowerExtension(path))
    try:
        try:
            yield temporaryPath
            _holdForTests()
            _flushToDisk(temporaryPath, path)
            if verify is not None:
                verify(temporaryPath)
            with stopsDeferred():
                os.replace(temporaryPath, path)
                _syncFolder(folder)
        except OSError as error:
            raise writeFailure(path, error.strerror or str(error)) from None
    finally:
        with stopsDeferred():
            removeLeftovers(folder, stem)


def lowerExtension(path) -> str:
    """The file's extension in lower case, with the double extensions .nii.gz and .seg.nrrd kept whole
    (writers choose the format by it, so a temporary name keeps it)."""
    name = os.path.basename(str(path)).lower()
    for double in (".seg.nrrd", ".nii.gz"):
        if name.endswith(double):
            return double
    return os.path.splitext(name)[1]


def _holdForTests():
    seconds = os.environ.get(HOLD_ENV)
    if seconds:
        time.sleep(float(seconds))


def _flushToDisk(temporaryPath, path):
    """fsync the written file; InputError when it is missing or empty."""
    if not os.path.isfile(temporaryPath):
        raise writeFailure(path, "the writer produced no file")
    descriptor = os.open(temporaryPath, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    if os.path.getsize(temporaryPath) == 0:
        raise writeFailure(path, "the file written is empty")


def _syncFolder(folder):
    """fsync the folder so that the rename itself survives a power cut (POSIX; a no-op where unsupported)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some file systems cannot sync a folder; the file itself was synced
    finally:
        os.close(descriptor)


def hostTag() -> str:
    """This machine's name reduced to letters and digits (at most 32): temporary names say which host wrote them."""
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def removeStaleLeftovers(folder) -> None:
    """Remove the temporary files and scratch of writes in ``folder`` by processes of this host that no longer run.

    A write killed outright (SIGKILL) leaves them behind. Another host's files
    (a shared disk) and those of live processes are left alone: only this
    host's process table says a writer is gone.
    """
    try:
        names = os.listdir(folder)
    except OSError:
        return
    host = hostTag()
    stems = {match.group(0) for match in map(_TEMPORARY_NAME.search, names)
             if match and match.group(1) == host and not _processRuns(int(match.group(2)))}
    for stem in stems:
        removeLeftovers(folder, stem)


def _processRuns(pid: int) -> bool:
    """True when a process with this id exists on this host (a signal-0 probe; one we may not signal exists too)."""
    if pid <= 0 or pid == os.getpid():  # kill(0, ...) would probe our own process group
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else
        return True
    return True


def removeLeftovers(folder, stem) -> None:
    """Remove every file or folder in ``folder`` whose name holds ``stem`` (the temporary file, writers' scratch)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if stem not in name:
            continue
        target = os.path.join(folder, name)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(target)
