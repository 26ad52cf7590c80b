"""Read a local file only if it really is a regular file inside an allowed directory.

A check on the path followed by a read of the path can be raced: a path component swapped for a
symlink between the two makes the read land outside the allowed directories, a FIFO makes it block
forever, a device makes it endless. So a file is opened exactly once and everything is checked on
the open descriptor, which cannot be swapped:

- ``O_NOFOLLOW``: a final symlink is never followed (a symlink in the final component is refused);
- ``O_NONBLOCK``: opening a FIFO returns at once instead of waiting for a writer;
- ``fstat``: only regular files (FIFOs, sockets, devices, directories are refused by name);
- the descriptor's real location (``/proc/self/fd`` on Linux, ``F_GETPATH`` on macOS) must be inside an
  allowed directory. Elsewhere the fallback compares ``(st_dev, st_ino)`` of the descriptor with those of the
  resolved path, which is inside: equal means the open file is that inside file, whatever was swapped;
- at most ``limit + 1`` bytes are ever read, whatever the file claims its size is.

The path is looked at (``lstat``, ``realpath``) before opening only to give a precise reason early and to
avoid opening devices at all (opening some has side effects); those looks decide nothing on their own.

The ``*_sync`` functions block (call them in a worker thread); :func:`read_local_file` runs there by itself.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePath

import anyio

StrPath = str | os.PathLike[str]

# Windows has neither flag; there the location check (inode comparison) is what guards the read.
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NOCTTY", 0)  # a terminal device must never become our controlling terminal
    | getattr(os, "O_BINARY", 0)
)
_CHUNK = 1 << 20
_PLATFORM = sys.platform  # a module constant so tests can exercise the portable fallback
_SHOWN_PATH_CHARS = 200


class SandboxError(ValueError):
    """A local file that may not or cannot be read; the message names the entry and says why."""


@dataclass(frozen=True)
class LocalFile:
    """The bytes of a checked file and where that file really is."""

    data: bytes
    real_path: Path


@dataclass(frozen=True)
class OpenFile:
    """A checked, open regular file: read it through ``fd`` only (closed when the block ends)."""

    fd: int
    real_path: Path
    size: int


def _show(path: str) -> str:
    """The path as it goes into a message: plain when printable, quoted when not; long ones cut."""
    text = path if len(path) <= _SHOWN_PATH_CHARS else path[:_SHOWN_PATH_CHARS] + "..."
    return text if text.isprintable() and text.strip() == text else repr(text)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "not a regular file"


def _inside(real: str, allowed: Sequence[str]) -> bool:
    path = PurePath(real)
    return any(path.is_relative_to(d) for d in allowed)


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB" if n < 10 * 1048576 else f"{n / 1048576:.0f} MiB"


class _Checker:
    """The messages of one open: every one starts with the entry's name and the path."""

    def __init__(self, path: str, where: str, allowed: Sequence[str]) -> None:
        self.path = path
        self.allowed = allowed
        self.prefix = f"{where}: " if where else ""

    def error(self, reason: str) -> SandboxError:
        return SandboxError(f"{self.prefix}{_show(self.path)} {reason}")

    def outside(self) -> SandboxError:
        return self.error(
            f"is outside the allowed directories ({', '.join(self.allowed)}); set RUNAPI_MCP_ALLOWED_DIRS to allow more"
        )

    def os_error(self, exc: OSError) -> SandboxError:
        code = exc.errno
        if code in (errno.ENOENT, errno.ENOTDIR):
            return self.error("cannot be read: no such file")
        if code in (errno.EACCES, errno.EPERM):
            return self.error("cannot be read: permission denied")
        if code == errno.ELOOP:
            return self.error("is a symbolic link (or loops through links); links are not followed")
        if code == errno.ENAMETOOLONG:
            return self.error("cannot be read: the path is too long")
        if code == errno.ENXIO:
            return self.error("is not a regular file")
        return self.error(f"cannot be read: {exc.strerror or exc.__class__.__name__}")


def _realpath(path: str, check: _Checker) -> str:
    # realpath() itself can fail when a component changes under it (lstat, then readlink of a link gone).
    try:
        return os.path.realpath(path)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG):
            raise check.os_error(exc) from None
        raise check.error("changed while it was being opened; try again") from None


def _real_location(fd: int, path: str, st: os.stat_result) -> str | None:
    """Where the open file ``fd`` really is; ``None`` when that cannot be told."""
    if _PLATFORM.startswith("linux"):
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            real = ""  # no /proc (some containers): fall through to the inode comparison
        if real.startswith("/"):
            # A file unlinked since it was opened shows as "<path> (deleted)": nothing to vouch for.
            return None if st.st_nlink == 0 else real
    if _PLATFORM == "darwin":
        import fcntl

        get_path = getattr(fcntl, "F_GETPATH", None)
        if get_path is not None:
            try:
                raw = fcntl.fcntl(fd, get_path, bytes(1024))
            except OSError:
                raw = b""
            real = os.fsdecode(raw.split(b"\0", 1)[0])
            if real.startswith("/"):
                return real
    # Fallback: the resolved path's file must be the very file we hold open. An attacker who swaps
    # things around can only make the two differ (refused) or make them the same inside file.
    try:
        resolved = os.path.realpath(path, strict=True)
        there = os.stat(resolved)
    except OSError:
        return None
    if (there.st_dev, there.st_ino) != (st.st_dev, st.st_ino):
        return None
    return resolved


def _text_path(path: StrPath, check: _Checker) -> str:
    text = os.fspath(path)
    if "\0" in text:
        raise check.error("contains a NUL character, which no file name can hold")
    try:
        os.fsencode(text)
    except UnicodeEncodeError:
        raise check.error("contains characters that cannot be part of a file name here") from None
    if not os.path.isabs(text):
        raise check.error("is not an absolute path")
    return text


@contextmanager
def open_checked_sync(
    path: StrPath, *, allowed_dirs: Sequence[StrPath], limit: int, where: str = ""
) -> Iterator[OpenFile]:
    """Open ``path`` once and check the descriptor (blocking: call in a worker thread).

    Raises :class:`SandboxError` unless it is a regular file of at most ``limit`` bytes whose real
    location is inside one of ``allowed_dirs`` (a final symlink is refused, not followed).
    """
    allowed = [os.path.realpath(os.fspath(d)) for d in allowed_dirs]
    check = _Checker(os.fspath(path), where, allowed)
    text = _text_path(path, check)
    # Looks before opening: precise reasons, and no device outside the sandbox is ever opened.
    try:
        before = os.lstat(text)
    except OSError as exc:
        raise check.os_error(exc) from None
    if stat.S_ISLNK(before.st_mode):
        if not _inside(_realpath(text, check), allowed):
            raise check.error(
                "is a symbolic link to somewhere outside the allowed directories "
                f"({', '.join(allowed)}); links are not followed"
            )
        raise check.error("is a symbolic link; links are not followed: give the path of the file itself")
    if not _inside(_realpath(text, check), allowed):
        raise check.outside()
    if not stat.S_ISREG(before.st_mode):
        raise check.error(f"is {_kind(before.st_mode)}, not a regular file")
    if before.st_size > limit:
        raise check.error(f"is {_mib(before.st_size)}; the limit is {_mib(limit)}")

    # The decisive part: one open, every check on the descriptor.
    try:
        fd = os.open(text, _OPEN_FLAGS)
    except OSError as exc:
        raise check.os_error(exc) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise check.error(f"is {_kind(st.st_mode)}, not a regular file")
        real = _real_location(fd, text, st)
        if real is None:
            raise check.error("changed while it was being opened; try again")
        if not _inside(real, allowed):
            raise check.outside()
        if st.st_size > limit:
            raise check.error(f"is {_mib(st.st_size)}; the limit is {_mib(limit)}")
        yield OpenFile(fd=fd, real_path=Path(real), size=st.st_size)
    finally:
        os.close(fd)


def read_fd_capped(fd: int, limit: int) -> bytes | None:
    """Up to ``limit`` bytes from ``fd``; ``None`` when there are more (never reads past ``limit + 1``)."""
    chunks: list[bytes] = []
    total = 0
    while total <= limit:
        try:
            chunk = os.read(fd, min(_CHUNK, limit + 1 - total))
        except BlockingIOError:
            return None  # only non-regular files block; refused earlier, so this is a swap: refuse
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
    return None


def read_checked_sync(path: StrPath, *, allowed_dirs: Sequence[StrPath], limit: int, where: str = "") -> LocalFile:
    """The bytes of ``path`` after the checks of :func:`open_checked_sync` (blocking)."""
    with open_checked_sync(path, allowed_dirs=allowed_dirs, limit=limit, where=where) as opened:
        try:
            data = read_fd_capped(opened.fd, limit)
        except OSError as exc:
            raise _Checker(str(opened.real_path), where, []).os_error(exc) from None
        if data is None:
            # The file grew past the limit after it was checked.
            prefix = f"{where}: " if where else ""
            raise SandboxError(f"{prefix}{_show(os.fspath(path))} is larger than the {_mib(limit)} limit")
        return LocalFile(data=data, real_path=opened.real_path)


async def read_local_file(path: StrPath, *, allowed_dirs: Sequence[StrPath], limit: int, where: str = "") -> LocalFile:
    """:func:`read_checked_sync` in a worker thread: no file work ever blocks the event loop."""
    return await anyio.to_thread.run_sync(
        lambda: read_checked_sync(path, allowed_dirs=allowed_dirs, limit=limit, where=where)
    )


# -- writing a new file ----------------------------------------------------------------------------
#
# The same care for the one write the server makes outside its home (``save_as``): a path checked and then
# written could be redirected by a directory swapped for a symlink in between. So the directory is reached by
# a walk from the allowed directory's own descriptor, one component at a time, none of them followed if it is
# a link (``O_DIRECTORY | O_NOFOLLOW``, relative to the descriptor of the one before); the file is created in
# that directory's descriptor with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (never an existing file, never through a
# link); and the new file's real location, read from its descriptor, must be inside an allowed directory
# (a directory moved out from under the walk): otherwise it is removed again and the write refused.
#
# The file's mode is 0666 through the umask (0644 under the usual 022): it is a file of the user's own
# project, asked for by name, and is made as their editor or any other tool would make it. The library's
# copy stays private (0600, ``runapi_mcp.private``); this one is theirs to share, commit or serve.

NEW_FILE_MODE = 0o666
# O_PATH (Linux) opens a directory for walking without needing read permission on it; elsewhere O_RDONLY.
_DIR_FLAGS = (
    (getattr(os, "O_PATH", 0) or os.O_RDONLY)
    | getattr(os, "O_DIRECTORY", 0)
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
)
_NEW_FILE_FLAGS = (
    os.O_WRONLY
    | os.O_CREAT
    | os.O_EXCL  # never an existing file; with O_CREAT a final symlink is not followed either
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_BINARY", 0)
)
# Without openat() (Windows) the directory is checked by path and the new file's location on its descriptor.
_WALKS = os.open in os.supports_dir_fd and os.stat in os.supports_dir_fd and bool(getattr(os, "O_DIRECTORY", 0))


@dataclass(frozen=True)
class NewFile:
    """A file just created for writing: write through ``fd`` only (closed when the block ends)."""

    fd: int
    real_path: Path


class _WriteChecker(_Checker):
    """The messages of a write: the same prefix and path, in a writer's words."""

    def os_error(self, exc: OSError) -> SandboxError:
        code = exc.errno
        if code in (errno.EACCES, errno.EPERM):
            return self.error("cannot be written: permission denied")
        if code == errno.EROFS:
            return self.error("cannot be written: the file system is read-only")
        if code == errno.ENOSPC:
            return self.error("cannot be written: no space left on the device")
        if code == errno.EEXIST:
            return self.exists(self.path)
        if code == errno.ENAMETOOLONG:
            return self.error("cannot be written: the name is too long")
        return self.error(f"cannot be written: {exc.strerror or exc.__class__.__name__}")

    def exists(self, path: str, what: str = "a file") -> SandboxError:
        """Refusing a name that is taken (``path``: the name itself, or another name the write may take)."""
        there = "exists" if what == "a file" else f"exists ({what})"
        where = f"{there}" if path == self.path else f"may be written as {_show(path)}, which {there}"
        return SandboxError(f"{self.prefix}{_show(self.path)} {where}; nothing is ever overwritten: choose a new name")

    def changed(self) -> SandboxError:
        return self.error("could not be written: its directory changed while it was being written; try again")


def _allowed_root(real: str, allowed: Sequence[str]) -> str | None:
    """The allowed directory ``real`` is in (the deepest, when they nest), or None."""
    roots = [d for d in allowed if PurePath(real).is_relative_to(d)]
    return max(roots, key=len) if roots else None


def _split_new(path: StrPath, check: _WriteChecker) -> tuple[str, str]:
    text = _text_path(path, check)
    if text.endswith(("/", os.sep)):
        raise check.error("names a directory, not a file; add a file name")
    parent, name = os.path.split(text)
    if name in ("", ".", ".."):
        raise check.error("names a directory, not a file; add a file name")
    return parent, name


def _locate(parent: str, check: _WriteChecker) -> tuple[str, tuple[str, ...], str]:
    """The allowed root, the components under it and the real path of the directory ``parent`` names now."""
    real = _realpath(parent, check)
    root = _allowed_root(real, check.allowed)
    if root is None:
        lexical = os.path.abspath(parent)
        if _inside(lexical, check.allowed):
            raise check.error(
                f"leads outside the allowed directories through a symbolic link (its directory is really "
                f"{_show(real)}; allowed: {', '.join(check.allowed)}); links out are not followed"
            )
        raise check.outside()
    return root, PurePath(real).relative_to(root).parts, real


@contextmanager
def _walk(root: str, parts: Sequence[str], real: str, check: _WriteChecker) -> Iterator[int]:
    """The directory ``root/parts...`` opened by a walk that follows no link (blocking). -1 without openat()."""
    if not _WALKS:
        try:
            st = os.stat(real)
        except OSError as exc:
            raise _dir_error(exc, real, check) from None
        if not stat.S_ISDIR(st.st_mode):
            raise check.error(f"cannot be written: {_show(real)} is not a directory")
        yield -1
        return
    try:
        fd = os.open(root, _DIR_FLAGS)
    except OSError as exc:
        raise _dir_error(exc, root, check) from None
    try:
        here = root
        for part in parts:
            here = os.path.join(here, part)
            try:
                inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise _component_error(exc, fd, part, here, check) from None
            os.close(fd)
            fd = inner
        location = _real_location(fd, real, os.fstat(fd))
        if location is None or not _inside(location, check.allowed):
            raise check.changed()
        yield fd
    finally:
        os.close(fd)


def _dir_error(exc: OSError, directory: str, check: _WriteChecker) -> SandboxError:
    if exc.errno == errno.ENOENT:
        return check.error(f"cannot be written: the directory {_show(directory)} does not exist; create it first")
    if exc.errno == errno.ENOTDIR:
        return check.error(f"cannot be written: {_show(directory)} is not a directory")
    return check.os_error(exc)


def _component_error(exc: OSError, fd: int, part: str, here: str, check: _WriteChecker) -> SandboxError:
    """Why ``part`` of the walk would not open as a directory: missing, a file, or a link swapped in."""
    if exc.errno in (errno.ENOTDIR, errno.ELOOP):
        try:
            st = os.stat(part, dir_fd=fd, follow_symlinks=False)
        except OSError:
            return check.changed()
        if stat.S_ISLNK(st.st_mode):
            return check.changed()  # it was a directory when it was resolved: a link swapped in since
        return check.error(f"cannot be written: {_show(here)} is not a directory")
    return _dir_error(exc, here, check)


def check_new_file_sync(
    path: StrPath, *, allowed_dirs: Sequence[StrPath], also: Sequence[str] = (), where: str = ""
) -> Path:
    """Check that ``path`` could be created (blocking): its directory exists, is inside ``allowed_dirs`` (also
    after resolving links) and writable, and neither ``path`` nor any name in ``also`` (other names in the same
    directory) exists. Returns the directory's real path. Decides nothing: :func:`create_new_file_sync` checks
    again, on descriptors; this gives the early, precise refusal.
    """
    allowed = [os.path.realpath(os.fspath(d)) for d in allowed_dirs]
    check = _WriteChecker(os.fspath(path), where, allowed)
    parent, name = _split_new(path, check)
    root, parts, real = _locate(parent, check)
    with _walk(root, parts, real, check) as fd:
        for other in dict.fromkeys([name, *also]):
            try:
                st = _lstat_in(fd, real, other)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise check.os_error(exc) from None
            target = os.path.join(parent, other)
            if other == name and stat.S_ISDIR(st.st_mode):
                example = _show(os.path.join(target, "a.png"))
                raise check.error(f"is a directory; give a file name in it, e.g. {example}")
            raise check.exists(target, _what(st.st_mode))
        if not os.access(real, os.W_OK):
            raise check.error(f"cannot be written: the directory {_show(real)} is not writable")
    return Path(real)


def _what(mode: int) -> str:
    return "a file" if stat.S_ISREG(mode) else _kind(mode)


def _lstat_in(dir_fd: int, real: str, name: str) -> os.stat_result:
    """``name`` in the directory open as ``dir_fd`` (``real`` without openat()), not following a link."""
    return os.stat(name, dir_fd=dir_fd, follow_symlinks=False) if dir_fd >= 0 else os.lstat(os.path.join(real, name))


@contextmanager
def create_new_file_sync(path: StrPath, *, allowed_dirs: Sequence[StrPath], where: str = "") -> Iterator[NewFile]:
    """Create ``path`` as a new file inside ``allowed_dirs`` and hold it open for writing (blocking).

    Never an existing file (not even a dangling link), never through a link: the directory is reached by a
    walk that follows none, the file made with ``O_EXCL | O_NOFOLLOW`` in it, and its real location checked
    on the descriptor. Raises :class:`SandboxError` naming ``where``. When the block raises, the new file is
    removed (only if the name still is that file).
    """
    allowed = [os.path.realpath(os.fspath(d)) for d in allowed_dirs]
    check = _WriteChecker(os.fspath(path), where, allowed)
    parent, name = _split_new(path, check)
    root, parts, real = _locate(parent, check)
    with _walk(root, parts, real, check) as dir_fd:
        full = os.path.join(real, name)
        try:
            if dir_fd >= 0:
                fd = os.open(name, _NEW_FILE_FLAGS, NEW_FILE_MODE, dir_fd=dir_fd)
            else:
                fd = os.open(full, _NEW_FILE_FLAGS, NEW_FILE_MODE)
        except OSError as exc:
            raise check.os_error(exc) from None
        try:
            st = os.fstat(fd)
            try:
                location = _real_location(fd, full, st)
                if location is None or not _inside(location, allowed):
                    raise check.changed()
                yield NewFile(fd=fd, real_path=Path(location))
            except BaseException:
                _remove_new(dir_fd, name, full, st)
                raise
        finally:
            os.close(fd)


def _remove_new(dir_fd: int, name: str, full: str, made: os.stat_result) -> None:
    """Remove the file this process just created, if the name still is that very file."""
    try:
        now = _lstat_in(dir_fd, os.path.dirname(full), name)
        if (now.st_dev, now.st_ino) == (made.st_dev, made.st_ino):
            if dir_fd >= 0:
                os.unlink(name, dir_fd=dir_fd)
            else:
                os.unlink(full)
    except OSError:
        pass


def write_fd_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data`` to ``fd`` (os.write may write less than asked)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
