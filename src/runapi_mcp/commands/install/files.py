"""A client's config file read and replaced safely: under a lock, after a backup, where a link leads, keeping
its owner, group and mode, refusing what is not a regular file (see the comment below)."""

from __future__ import annotations

import os
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from runapi_mcp.commands.install.clients import InstallError

# A config file is someone's: it may be a link into a dotfiles repository, belong to another user (install
# run with sudo), be read-only on purpose, or be something that is not a file at all. So the file written is
# the one a link leads to (the link stays); it keeps its owner, group and mode; a read-only file, or one this
# user could only replace by taking it over, is refused; anything but a regular file is refused before it is
# opened (a FIFO would hang the read, /dev/zero would fill memory), and so is a file too large to be a config.
# Each edit runs under a lock, re-reads the file and merges into what it finds, so concurrent installs keep
# each other's entries, and the new text replaces the old in one step (a temporary file in the same
# directory, then a rename).

MIB = 1024 * 1024
MAX_CONFIG_BYTES = 10 * MIB
# ~/.claude.json also holds Claude Code's per-project state: files of 15 to 100 MB have been reported.
MAX_CLAUDE_JSON_BYTES = 256 * MIB
LOCK_TIMEOUT_S = 30.0
_LOCK_NAME = ".runapi-mcp-install.lock"  # only where a directory itself cannot be locked (some NFS, Windows)
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


@dataclass
class ConfigFile:
    """A config file as read: the name it was given, the file that name leads to, and what it held."""

    path: Path  # as named (it may be a symbolic link, or lie in a linked directory)
    real: Path  # the file itself, every link resolved: what is read and replaced
    data: bytes | None = None  # None: there is no such file yet
    st: os.stat_result | None = None

    @property
    def linked(self) -> bool:
        """The name is a symbolic link (to another name, maybe in a dotfiles repository)."""
        return os.path.islink(self.path)

    def text(self) -> str:
        if self.data is None:
            return ""
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InstallError(
                f"{self.path} is not UTF-8 text ({exc.reason} at byte {exc.start}); it was left unchanged."
            ) from None


def _real_path(path: Path) -> Path:
    real = Path(os.path.realpath(path))
    if real.is_symlink():  # realpath gives up on a loop and returns a link
        raise InstallError(f"{path} is a symbolic link that leads back to itself; it was left unchanged.")
    return real


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _check_regular(config: ConfigFile, st: os.stat_result, limit: int) -> None:
    where = f"{config.path} (a link to {config.real})" if config.linked else str(config.path)
    if not stat.S_ISREG(st.st_mode):
        raise InstallError(
            f"{where} is {_kind(st.st_mode)}, not a regular file: it was not opened and nothing was written. "
            "Point --config at the client's config file."
        )
    if st.st_size > limit:
        raise InstallError(
            f"{where} is {st.st_size / MIB:.1f} MiB, more than the {limit // MIB} MiB a client's config file is "
            "read up to; it was left unchanged."
        )


def read_config(path: Path, *, limit: int = MAX_CONFIG_BYTES) -> ConfigFile:
    """The config at ``path`` (through any links), refused unless it is a regular file of at most ``limit`` bytes.

    Checked with ``stat`` before it is opened, opened without blocking (a FIFO swapped in meanwhile cannot
    hang it) and checked again on the open file, and never read past ``limit``.
    """
    config = ConfigFile(path, _real_path(path))
    try:
        st = os.stat(config.real)
    except FileNotFoundError:
        return config
    except OSError as exc:
        raise InstallError(f"cannot read {path}: {exc.strerror}; it was left unchanged.") from None
    _check_regular(config, st, limit)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(config.real, flags)
    except OSError as exc:
        raise InstallError(f"cannot read {path}: {exc.strerror}; it was left unchanged.") from None
    try:
        st = os.fstat(fd)
        _check_regular(config, st, limit)
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, min(MIB, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise InstallError(f"{path} grew past {limit // MIB} MiB while being read; it was left unchanged.")
    except OSError as exc:
        raise InstallError(f"cannot read {path}: {exc.strerror}; it was left unchanged.") from None
    finally:
        os.close(fd)
    config.data, config.st = b"".join(chunks), st
    return config


def read_text_file(path: Path, *, limit: int = MAX_CONFIG_BYTES) -> str | None:
    """The text of a small regular file at ``path``; None when it is missing, unreadable or not such a file."""
    try:
        return read_config(path, limit=limit).text() if os.path.lexists(path) else None
    except InstallError:
        return None


def check_writable(config: ConfigFile) -> None:
    """Refuse, before anything is written, a file this user should not or could not replace as it is."""
    st = config.st
    if st is None:
        return
    where = f"{config.path} (a link to {config.real})" if config.linked else str(config.path)
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o222:
        raise InstallError(
            f"{where} is read-only (mode {mode:04o}), so it was left unchanged. If the entry should go in, make it "
            f"writable first (chmod u+w {config.real}), or add the entry by hand."
        )
    if not os.access(config.real, os.W_OK):
        raise InstallError(
            f"{where} cannot be written by this user (mode {mode:04o}), or its file system is read-only; it was left "
            "unchanged."
        )
    if st.st_nlink > 1:
        raise InstallError(
            f"{where} has {st.st_nlink} hard links: replacing it would leave the others with the old text, so it "
            "was left unchanged. Add the entry by hand, or make the other names symbolic links."
        )
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        if st.st_uid != os.geteuid():
            raise InstallError(
                f"{where} belongs to another user (uid {st.st_uid}); the new file would belong to you instead, so "
                "it was left unchanged. Run the command as that user."
            )
        if st.st_gid != os.getegid() and st.st_gid not in os.getgroups():
            raise InstallError(
                f"{where} belongs to group {st.st_gid}, which you are not in; the new file could not keep it, so it "
                "was left unchanged."
            )


def _owner_of(directory: Path) -> tuple[int, int] | None:
    """Who a file created in ``directory`` should belong to: its owner, when running as root for someone else."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    st = directory.stat()
    return None if (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid()) else (st.st_uid, st.st_gid)


def _make_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents, owned like the nearest one that exists."""
    missing: list[Path] = []
    probe = directory
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    if not missing:
        return
    owner = _owner_of(probe)
    for created in reversed(missing):
        try:
            created.mkdir(exist_ok=True)
            if owner is not None:
                os.chown(created, *owner)
        except OSError as exc:
            raise InstallError(f"cannot create {created}: {exc.strerror}") from None


def _write_new(target: Path, data: bytes, mode: int, owner: tuple[int, int] | None, *, replace: bool) -> None:
    """``data`` at ``target`` with ``mode`` and ``owner``: through a temporary file renamed over it when
    ``replace``, else created only if ``target`` does not exist (FileExistsError)."""
    directory = target.parent
    if replace:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
        name = tmp
    else:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        name = str(target)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        # The owner first: a change of owner clears set-id bits. Compared with the new file's own (a directory
        # may give it its group), not with this process's.
        if owner is not None and hasattr(os, "fchown"):
            made = os.fstat(fd)
            if (made.st_uid, made.st_gid) != owner:
                os.fchown(fd, *owner)
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
        else:  # Windows: only the read-only flag exists
            os.chmod(name, mode)
        os.close(fd)
        fd = -1
        if replace:
            os.replace(tmp, target)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        Path(name).unlink(missing_ok=True)
        raise
    if replace and hasattr(os, "O_DIRECTORY"):
        try:  # the rename itself survives a crash only once the directory is on disk
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)


def _kept_owner(st: os.stat_result) -> tuple[int, int] | None:
    return (st.st_uid, st.st_gid) if hasattr(os, "fchown") else None


def write_config(config: ConfigFile, text: str, *, private: bool = False) -> None:
    """Replace the file ``config`` was read from with ``text`` in one step (its owner, group and mode kept).

    Through a link, the file the link leads to is replaced and the link stays. A crash leaves the old file
    or the new one, never half. ``private`` (the file now holds the key) takes every permission away from
    other users; a new file is 0600.
    """
    check_writable(config)
    real = config.real
    _make_dirs(real.parent)
    if config.st is not None:
        mode, owner = stat.S_IMODE(config.st.st_mode), _kept_owner(config.st)
    else:
        mode, owner = 0o600, _owner_of(real.parent)
    if private:
        mode &= 0o700
    try:
        _write_new(real, text.encode("utf-8"), mode, owner, replace=True)
    except OSError as exc:
        raise InstallError(f"could not write {config.path}: {exc.strerror or exc}; it was left unchanged.") from None


def backup(config: ConfigFile, *, now: datetime | None = None) -> Path:
    """The bytes ``config`` was read with, in ``<name>.<timestamp>.bak`` beside its name (never over an earlier
    backup), with the same owner and mode: a backup of a private file is private too."""
    assert config.data is not None and config.st is not None
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    mode, owner = stat.S_IMODE(config.st.st_mode) | 0o600, _kept_owner(config.st)
    n = 0
    while True:
        target = config.path.with_name(f"{config.path.name}.{stamp}{f'-{n}' if n else ''}.bak")
        try:
            _write_new(target, config.data, mode, owner, replace=False)
            return target
        except FileExistsError:
            n += 1
        except OSError as exc:
            raise InstallError(
                f"could not back up {config.path} to {target}: {exc.strerror}; it was left unchanged."
            ) from None


_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


def _lock_fd(directory: Path, *, sidecar: bool) -> int:
    if sidecar:
        fd = os.open(directory / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        owner = _owner_of(directory)
        if owner is not None and hasattr(os, "fchown"):
            os.fchown(fd, *owner)
        return fd
    return os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _try_lock(fd: int) -> bool:
    """Take the lock on ``fd`` if it is free: True, or False when another holds it."""
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextmanager
def _directory_lock(directory: Path, deadline: float) -> Iterator[None]:
    """Hold the lock of ``directory`` (its own flock; a lock file in it where that is refused)."""
    busy = InstallError(
        f"another runapi-mcp install has been editing a file in {directory} for {LOCK_TIMEOUT_S:.0f} s; nothing "
        "was changed: try again"
    )
    with _THREAD_LOCKS_GUARD:
        in_process = _THREAD_LOCKS.setdefault(str(directory), threading.Lock())
    if not in_process.acquire(timeout=max(0.0, deadline - time.monotonic())):
        raise busy
    fd = -1
    try:
        sidecar = sys.platform == "win32"
        try:
            fd = _lock_fd(directory, sidecar=sidecar)
            while not _try_lock(fd):
                if time.monotonic() > deadline:
                    raise busy
                time.sleep(0.01)
        except OSError as exc:
            if sidecar:
                raise InstallError(f"cannot lock {directory}: {exc.strerror or exc}; nothing was changed") from None
            # flock on a directory is refused here (NFS emulates flock with fcntl locks, which need a file
            # open for writing): a lock file in it instead.
            if fd >= 0:
                os.close(fd)
                fd = -1
            try:
                fd = _lock_fd(directory, sidecar=True)
                while not _try_lock(fd):
                    if time.monotonic() > deadline:
                        raise busy from None
                    time.sleep(0.01)
            except OSError as again:
                raise InstallError(f"cannot lock {directory}: {again.strerror or again}; nothing was changed") from None
        yield
    finally:
        if fd >= 0:
            os.close(fd)  # releases the lock
        in_process.release()


@contextmanager
def locked(*paths: Path) -> Iterator[None]:
    """One edit at a time of the files at ``paths``: the directories they lie in (through links) are locked.

    Another install waits (up to LOCK_TIMEOUT_S), then reads the file as the first one left it. The lock
    is the directory itself, so no lock file is left beside a config (a client may use ``<file>.lock``
    for its own lock); the directories are taken in one order, so two installs cannot wait on each other.
    """
    directories = sorted({_real_path(path).parent for path in paths}, key=str)
    for directory in directories:
        _make_dirs(directory)
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    with ExitStack() as stack:
        for directory in directories:
            stack.enter_context(_directory_lock(directory, deadline))
        yield
