"""Private by default: what the server keeps in ``RUNAPI_MCP_HOME`` is readable by its own user only.

The task store holds every prompt, subject and webhook secret, and the library every picture: other
local users must not read them, whatever the umask (022 would make them world-readable). Directories
the server makes are 0700 and files 0600, set explicitly (a mode given to ``mkdir``/``open`` is masked
by the umask, which may take too much as well as too little). A directory found more open than that is
tightened, and the caller says so in the log.

The lowest layer: it imports nothing of the project, so every layer may use it. On Windows modes are
not POSIX permissions (the per-user profile holds the home there): the helpers only create.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "private_dir",
    "private_fd",
    "private_file",
    "tighten",
    "tighten_entries",
]

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
_POSIX = os.name == "posix"
_OPEN_TO_OTHERS = stat.S_IRWXG | stat.S_IRWXO


def private_dir(path: Path) -> int | None:
    """Make ``path`` (and any missing parent) a directory, 0700 where this call creates it, and tighten
    it to 0700 when it exists more open (blocking).

    Returns the mode it had when that was tightened (for the caller's log line), else None. Raises
    ``OSError`` when the directory cannot be made; a mode that cannot be changed (a directory of
    another user) is left as it is.
    """
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:
            pass  # another process made it in the meantime: tightened below, as an existing one
        else:
            _chmod(folder, PRIVATE_DIR_MODE)  # mkdir's mode went through the umask
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a directory")
    return tighten(path)


def private_file(path: Path) -> int | None:
    """Make sure ``path`` exists as a file only its owner reads (blocking): created empty with 0600 when
    missing, tightened to 0600 when more open. Returns the mode it had when that was tightened.

    For files another library opens by name (SQLite): created first, they are born private, and
    SQLite gives its ``-wal`` and ``-shm`` files the mode of the database.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), PRIVATE_FILE_MODE)
    except FileExistsError:
        return tighten(path)
    try:
        private_fd(fd)  # the umask may have taken the owner's write bit too
    finally:
        os.close(fd)
    return None


def private_fd(fd: int) -> None:
    """Make the file open at ``fd`` (one this process created) 0600 (blocking)."""
    if _POSIX:
        os.fchmod(fd, PRIVATE_FILE_MODE)


def tighten(path: Path) -> int | None:
    """Take group and other access off ``path`` (0700 for a directory, 0600 for a file; a symlink is
    never followed). Returns the mode it had when it changed, else None (also when it is missing, or
    its mode cannot be changed: another user's)."""
    if not _POSIX:
        return None
    # Checked and changed through one descriptor: what is changed is what was checked, never a link.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            wanted = PRIVATE_DIR_MODE
        elif stat.S_ISREG(st.st_mode):
            wanted = PRIVATE_FILE_MODE
        else:
            return None  # a FIFO, a socket, ...: not ours to change
        mode = stat.S_IMODE(st.st_mode)
        if not mode & _OPEN_TO_OTHERS:
            return None
        os.fchmod(fd, wanted)
        return mode
    except OSError:
        return None
    finally:
        os.close(fd)


def tighten_entries(folders: Iterable[Path]) -> int:
    """:func:`tighten` every file and directory directly in each of ``folders`` (blocking); how many
    changed. Used once, when a folder was found open to others (its files may be too)."""
    changed = 0
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if tighten(Path(entry.path)) is not None:
                changed += 1
    return changed


def _chmod(path: Path, mode: int) -> None:
    """The mode of something this process has just made (so not a link planted in its place)."""
    if _POSIX:
        os.chmod(path, mode)
