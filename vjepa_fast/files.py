"""Writing files so that a crash never leaves a half-written one, and one run per output folder."""
from __future__ import annotations

import atexit
import logging
import os
import re
import socket
import tempfile
from pathlib import Path

log = logging.getLogger("vjepa_fast")


def atomic_write(path: Path, write) -> None:
    """write(tmp_path) into the same folder, fsync, rename over path, fsync the folder: a crash
    (or a power cut) leaves the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes owner-only files; give the usual permissions
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    except BaseException:
        if os.path.exists(tmp):  # gone once renamed
            os.unlink(tmp)
        raise


def _fsync(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# atomic_write's temporary names: "." + the target's name + "." + mkstemp's 8 random characters.
_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}$")


def remove_stale_temps(folder: Path) -> list[str]:
    """Deletes the temporary files that interrupted atomic writes left in `folder` (call it while
    holding the folder's lock: no other writer can be mid-write). Returns their names."""
    stale = [p for p in Path(folder).glob(".*") if p.is_file() and _TEMP.match(p.name)]
    for p in stale:
        p.unlink()
    return [p.name for p in stale]


class FolderLock:
    """One run per output folder: FOLDER/.lock holds "host pid" of the process using it. A second
    process is refused; a lock left by a process that no longer runs (on this host) is taken
    over with a notice. Re-entrant within one process; released when the process exits."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / ".lock"
        self.me = f"{socket.gethostname()} {os.getpid()}"

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.path.read_text().strip() if self.path.exists() else ""
                if holder == self.me:
                    return
                host, _, pid = holder.partition(" ")
                if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                    log.warning(f"{self.path.parent}: taking over the lock of process {pid}, which no longer runs")
                    self.path.unlink(missing_ok=True)
                    continue
                raise ValueError(f"{self.path.parent} is in use by another run (process {pid or '?'} on "
                                 f"{host or '?'}, {self.path}); give another --out, or wait for it to finish")
            with os.fdopen(fd, "w") as f:
                f.write(self.me + "\n")
            atexit.register(self.release)
            return

    def release(self) -> None:
        if self.path.exists() and self.path.read_text().strip() == self.me:
            self.path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
