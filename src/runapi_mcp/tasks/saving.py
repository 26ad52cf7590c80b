"""``save_as``: a copy of a task's pictures, written where the user asked, inside the allowed directories.

The path is a file (absolute, or relative to the first allowed directory). It is checked when the tool is
called, before anything is quoted, uploaded or created (:func:`check_save_as`): inside the allowed
directories (also after resolving links), its directory there already, and no file at any name the copy may
take. The task remembers it (``TaskRecord.save_as``), so a task taken up after a restart still writes its
copy; the copy is written when the pictures are in the library (:func:`write_copy`), through the sandbox's
race-free create (``sandbox.create_new_file_sync``): never an existing file, never through a link.

Names: one picture is written at the name given; several at ``name-1``, ``name-2``, ... in output order. The
extension follows the picture's real type: ``hero.png`` for a JPEG becomes ``hero.jpg`` (an extension that
names the type in another spelling, ``.jpeg``, is kept), and a name without an image extension gets one
(``hero`` -> ``hero.png``). So the file's name never lies about its content, and save_as only ever makes image
files. The result says where each copy went, and why one was not written.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from runapi_mcp.tasks.images import ImageStore
from runapi_mcp.tasks.records import ImageRecord
from runapi_mcp.tasks.references import ImageReferenceError
from runapi_mcp.tasks.sandbox import (
    SandboxError,
    StrPath,
    check_new_file_sync,
    create_new_file_sync,
    write_fd_all,
)

ARGUMENT = "save_as"
_WHERE = f"'{ARGUMENT}'"
# Every extension an image file may have, and the type it names; the first of each type is the library's.
_EXTENSION_TYPES: Mapping[str, str] = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".jpe": "JPEG",
    ".webp": "WEBP",
    ".gif": "GIF",
    ".bmp": "BMP",
    ".tiff": "TIFF",
    ".tif": "TIFF",
}
_TYPE_EXTENSIONS = {kind: ext for ext, kind in reversed(list(_EXTENSION_TYPES.items()))}
_COPY_CHUNK = 1 << 20


class SaveAsError(ImageReferenceError):
    """A ``save_as`` that cannot be used; the message names the argument and says why (the server words it
    as it does an unusable image reference: the caller's to fix)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field=ARGUMENT)


def requested_path(value: str, allowed_dirs: Sequence[StrPath]) -> str:
    """The absolute path ``save_as`` names: ``~`` expanded, a relative path under the first allowed directory.

    Only text work; the disk is looked at by :func:`check_save_as`."""
    text = value.strip()
    if not text:
        raise SaveAsError(f"{_WHERE} is empty; give a file path, e.g. assets/picture.png")
    expanded = os.path.expanduser(text)
    if os.path.isabs(expanded):
        return expanded
    if not allowed_dirs:
        raise SaveAsError(f"{_WHERE} cannot be used: no directory is allowed (set RUNAPI_MCP_ALLOWED_DIRS)")
    return os.path.join(os.fspath(allowed_dirs[0]), expanded)


def _split(name: str) -> tuple[str, str]:
    """``name`` as (stem, image extension); the extension is "" when it names no image type."""
    stem, ext = os.path.splitext(name)
    return (stem, ext) if ext.lower() in _EXTENSION_TYPES and stem else (name, "")


def copy_name(name: str, index: int, count: int, extension: str) -> str:
    """The file name of output ``index`` (0-based) of ``count`` for the name ``name`` asked for, when that
    picture's type has the library's ``extension`` (``".jpg"``): ``-1``, ``-2``, ... for several, the
    extension of the picture's real type (the one asked for where it names that type)."""
    stem, ext = _split(name)
    kind = _EXTENSION_TYPES.get(extension.lower())
    final = ext if ext and _EXTENSION_TYPES[ext.lower()] == kind else extension
    return f"{stem}{f'-{index + 1}' if count > 1 else ''}{final}"


def possible_names(name: str, outputs: int) -> list[str]:
    """Every name a copy may take for the name asked for, when a task makes up to ``outputs`` pictures:
    the name itself, ``-1`` ... ``-outputs`` when several may come, and with every image extension when the
    name has none (which one is known only when the picture is)."""
    stem, ext = _split(name)
    suffixes = [""] + ([f"-{n}" for n in range(1, outputs + 1)] if outputs > 1 else [])
    extensions = [ext] if ext else list(_TYPE_EXTENSIONS.values())
    names = [f"{stem}{suffix}{extension}" for suffix in suffixes for extension in extensions]
    return list(dict.fromkeys([name, *names]))


def expected_outputs(body: Mapping[str, Any], max_outputs: int, count_default: object = None) -> int:
    """How many pictures a request asks for: its ``output_count`` (or that field's default), else the most its
    model makes; never more than that."""
    count = body.get("output_count", count_default)
    if isinstance(count, int) and not isinstance(count, bool) and count >= 1:
        return min(count, max_outputs)
    return max(1, max_outputs)


def check_save_as(path: str, outputs: int, allowed_dirs: Sequence[StrPath]) -> Path:
    """Refuse, naming ``save_as``, a path that cannot take the copies (blocking): outside the allowed
    directories, a directory that does not exist, or any name the copies may take already there. Returns the
    directory's real path."""
    if not allowed_dirs:
        raise SaveAsError(f"{_WHERE} cannot be used: no directory is allowed (set RUNAPI_MCP_ALLOWED_DIRS)")
    others = possible_names(os.path.basename(path), outputs) if os.path.basename(path) else []
    try:
        return check_new_file_sync(path, allowed_dirs=allowed_dirs, also=others, where=_WHERE)
    except SandboxError as exc:
        raise SaveAsError(str(exc)) from None


def write_copy(
    library: ImageStore, image: ImageRecord, save_as: str, count: int, allowed_dirs: Sequence[StrPath]
) -> Path:
    """Copy library image ``image`` (output ``image.index`` of ``count``) to its name for ``save_as``
    (blocking). Returns where it went; raises :class:`SaveAsError` (or ``ImageNotFoundError``) saying why not.
    """
    if not allowed_dirs:
        raise SaveAsError("no directory is allowed now (RUNAPI_MCP_ALLOWED_DIRS)")
    with library.open_image_sync(image.id) as (source, info, size):
        parent, name = os.path.split(save_as)
        target = os.path.join(parent, copy_name(name, image.index, count, info.extension))
        try:
            with create_new_file_sync(target, allowed_dirs=allowed_dirs) as new:
                left = size
                while left > 0:
                    chunk = source.read(min(_COPY_CHUNK, left))
                    if not chunk:
                        break
                    write_fd_all(new.fd, chunk)
                    left -= len(chunk)
                return new.real_path
        except SandboxError as exc:
            raise SaveAsError(str(exc)) from None
        except OSError as exc:  # a write that failed midway (the file was removed again)
            raise SaveAsError(f"{target} could not be written: {exc.strerror or type(exc).__name__}") from None


def extension_note(save_as: str | None, saved: str) -> str | None:
    """Why the copy's extension is not the one asked for, when it is not (else None)."""
    if not save_as:
        return None
    asked = _split(os.path.basename(save_as))[1]
    got = os.path.splitext(saved)[1]
    if asked.lower() == got.lower():
        return None
    kind = _EXTENSION_TYPES.get(got.lower(), got.lstrip(".").upper())
    return f"the picture is {kind}" + (f", not {asked}" if asked else "")
