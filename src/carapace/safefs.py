"""Opening paths an agent can write: never through a link, never outside a root (DESIGN §5).

Everything below an agent's group folder, its session folder's writable files and its
``outbox/`` is attacker input: any component may be a symlink, a FIFO or a hard link placed
there to make the host read or write something else. The rule for host code:

* name the file by a trusted root (a directory the host opened itself) plus a relative path;
* open it with :func:`open_beneath`: ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
  RESOLVE_NO_MAGICLINKS)`` where the kernel has it, else a walk of ``openat(O_NOFOLLOW)``
  one component at a time; either way a symlink anywhere on the path is refused;
* check what was opened with ``fstat`` on the descriptor (:func:`read_beneath` insists on a
  regular file), never ``exists()``/``is_file()`` before opening;
* row fields that become path components (ids, file names) pass :func:`plain_name` first.

Every refusal is an :class:`UnsafePathError` (a ``ValidationError``) naming what was wrong.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import stat
import sys
from collections.abc import Iterator

from carapace.errors import ValidationError
from carapace.log import get_logger

__all__ = [
    "UnsafePathError",
    "copy_beneath",
    "list_beneath",
    "mkdirs_beneath",
    "open_beneath",
    "open_root",
    "plain_name",
    "read_beneath",
    "remove_tree",
    "write_beneath",
]

logger = get_logger(__name__)

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437, "armv7l": 437, "riscv64": 437}
MAX_NAME = 255
_BAD_NAMES = {"", ".", ".."}


class UnsafePathError(ValidationError):
    """A path an agent controls was refused (a link, a non-regular file, an escape)."""

    code = "unsafe-path"


def plain_name(name: object, what: str = "file name") -> str:
    """``name`` if it is one plain path component, else ``UnsafePathError``.

    Plain: a non-empty ``str`` of at most 255 UTF-8 bytes, not ``.``/``..``, with no ``/``,
    NUL, backslash or control character."""
    if not isinstance(name, str) or name in _BAD_NAMES:
        raise UnsafePathError(f"{what} {name!r} is not a plain name")
    if "/" in name or "\\" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise UnsafePathError(f"{what} {name!r} is not a plain name")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafePathError(f"{what} {name!r} is not valid UTF-8") from None
    if len(encoded) > MAX_NAME:
        raise UnsafePathError(f"{what} is longer than {MAX_NAME} bytes")
    return name


def _parts(rel: str | os.PathLike[str]) -> list[str]:
    text = os.fspath(rel)
    if text.startswith("/"):
        raise UnsafePathError(f"path {text!r} must be relative")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts:
        raise UnsafePathError(f"path {text!r} names no file")
    for part in parts:
        if part == "..":
            raise UnsafePathError(f"path {text!r} leaves its folder")
        plain_name(part, "path component")
    return parts


def open_root(path: str | os.PathLike[str]) -> int:
    """A descriptor on a directory the host trusts by its absolute path (itself no link)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise UnsafePathError(f"cannot open folder {os.fspath(path)}: {_why(exc)}") from None


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64))  # fmt: skip


_openat2_state: list[bool] = []  # [] unknown, [True] works, [False] unavailable


@functools.cache
def _libc() -> ctypes.CDLL:
    """The C library, loaded once (a ``CDLL`` per open cost a ``dlopen`` each time)."""
    return ctypes.CDLL(None, use_errno=True)


def _openat2(dirfd: int, path: str, flags: int, mode: int) -> int | None:
    """``openat2`` confined and link-free, or ``None`` where the kernel lacks it."""
    if _openat2_state == [False]:
        return None
    nr = _SYS_OPENAT2.get(os.uname().machine)
    if nr is None or not sys.platform.startswith("linux"):
        _openat2_state[:] = [False]
        return None
    libc = _libc()
    if not flags & os.O_CREAT:
        mode = 0  # openat2 refuses a mode without O_CREAT
    how = _OpenHow(flags, mode, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
    fd = int(libc.syscall(nr, dirfd, path.encode(), ctypes.byref(how), ctypes.sizeof(how)))
    if fd >= 0:
        _openat2_state[:] = [True]
        return fd
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EPERM) and _openat2_state != [True]:
        _openat2_state[:] = [False]  # no syscall, or a seccomp filter refusing it
        return None
    raise OSError(err, os.strerror(err), path)


def _walk_open(dirfd: int, parts: list[str], flags: int, mode: int) -> int:
    """The fallback: one ``openat(O_NOFOLLOW)`` per component."""
    current = dirfd
    try:
        for part in parts[:-1]:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=current)  # fmt: skip
            if current != dirfd:
                os.close(current)
            current = nxt
        return os.open(parts[-1], flags | os.O_NOFOLLOW, mode, dir_fd=current)
    finally:
        if current != dirfd:
            os.close(current)


def _why(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "a symbolic link is in the way"
    if exc.errno == errno.ENOTDIR:
        return "a symbolic link or a file is in the way of a folder"
    if exc.errno == errno.EXDEV:
        return "the path leaves its folder"
    return exc.strerror or str(exc)


def open_beneath(
    root: int | str | os.PathLike[str],
    rel: str | os.PathLike[str],
    flags: int = os.O_RDONLY,
    mode: int = 0o600,
) -> int:
    """A descriptor on ``root/rel`` opened without following any link and never outside
    ``root`` (a descriptor, or a trusted absolute folder path). ``UnsafePathError`` when a
    link, ``..`` or a non-plain component is in the way; ``FileNotFoundError`` when missing.
    """
    parts = _parts(rel)
    own = not isinstance(root, int)
    dirfd = open_root(root) if not isinstance(root, int) else root
    flags |= os.O_CLOEXEC | os.O_NOCTTY
    try:
        try:
            fd = _openat2(dirfd, "/".join(parts), flags, mode)
            if fd is None:
                fd = _walk_open(dirfd, parts, flags, mode)
        except FileNotFoundError:
            raise
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR):
                raise UnsafePathError(f"refused {os.fspath(rel)!r}: {_why(exc)}") from None
            raise
        return fd
    finally:
        if own:
            os.close(dirfd)


def read_beneath(
    root: int | str | os.PathLike[str],
    rel: str | os.PathLike[str],
    max_bytes: int,
    *,
    truncate: bool = False,
) -> bytes:
    """The bytes of the regular file ``root/rel`` (see :func:`open_beneath`), at most
    ``max_bytes``; a FIFO, device, directory or larger file is refused (or, with
    ``truncate``, cut at ``max_bytes``); nothing blocks."""
    fd = open_beneath(root, rel, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePathError(f"refused {os.fspath(rel)!r}: not a regular file")
        if st.st_size > max_bytes and not truncate:
            raise UnsafePathError(f"refused {os.fspath(rel)!r}: larger than {max_bytes} bytes")
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, min(1 << 20, max_bytes + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                if truncate:
                    return b"".join(chunks)[:max_bytes]
                raise UnsafePathError(f"refused {os.fspath(rel)!r}: larger than {max_bytes} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _parent_fd(root: int | str | os.PathLike[str], parts: list[str]) -> Iterator[int]:
    if len(parts) == 1:
        fd = root if isinstance(root, int) else open_root(root)
        try:
            yield fd
        finally:
            if not isinstance(root, int):
                os.close(fd)
        return
    fd = open_beneath(root, "/".join(parts[:-1]), os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


def write_beneath(
    root: int | str | os.PathLike[str],
    rel: str | os.PathLike[str],
    data: bytes,
    mode: int = 0o600,
) -> None:
    """Replace ``root/rel`` atomically with ``data``: a fresh temporary file created with
    ``O_EXCL|O_NOFOLLOW`` next to it, fsynced, renamed over the old entry. A link at
    ``rel`` is replaced, never followed; a link among the parent folders is refused."""
    parts = _parts(rel)
    with _parent_fd(root, parts) as dirfd:
        tmp = f".{parts[-1][:200]}.{os.urandom(6).hex()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode, dir_fd=dirfd)  # fmt: skip
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fchmod(fd, mode)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, parts[-1], src_dir_fd=dirfd, dst_dir_fd=dirfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dirfd)
            raise


def write_beneath_if_changed(
    root: int | str | os.PathLike[str],
    rel: str | os.PathLike[str],
    data: bytes,
    mode: int = 0o600,
) -> bool:
    """:func:`write_beneath` unless ``root/rel`` already is a regular, singly linked file
    (reached without a link) with exactly ``data`` and ``mode``. Returns True when it
    wrote. Spares a rename (and an fsync) per runner start: a file bound into a sandbox
    that is being set up at that moment must not be replaced under it (bubblewrap refuses
    the bind: "Race condition binding dirfd")."""
    try:
        fd = open_beneath(root, rel, os.O_RDONLY | os.O_NONBLOCK)
    except (OSError, UnsafePathError):
        fd = -1
    if fd >= 0:
        try:
            st = os.fstat(fd)
            same = (
                stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_uid == os.geteuid()
                and stat.S_IMODE(st.st_mode) == mode and st.st_size == len(data)
                and os.read(fd, len(data) + 1) == data
            )  # fmt: skip
        except OSError:
            same = False
        finally:
            os.close(fd)
        if same:
            return False
    write_beneath(root, rel, data, mode)
    return True


def copy_beneath(
    src_root: int | str | os.PathLike[str],
    src_rel: str | os.PathLike[str],
    dst_root: int | str | os.PathLike[str],
    dst_rel: str | os.PathLike[str],
    max_bytes: int,
    mode: int = 0o600,
) -> int:
    """Copy one regular file between two confined places (both rules apply); its size."""
    data = read_beneath(src_root, src_rel, max_bytes)
    write_beneath(dst_root, dst_rel, data, mode)
    return len(data)


def list_beneath(
    root: int | str | os.PathLike[str], rel: str | os.PathLike[str] = "."
) -> list[str]:
    """Names in the folder ``root/rel`` (``"."`` for ``root`` itself), opened link-free."""
    if os.fspath(rel) in ("", "."):
        fd = os.dup(root) if isinstance(root, int) else open_root(root)
    else:
        fd = open_beneath(root, rel, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return sorted(os.listdir(fd))
    finally:
        os.close(fd)


def mkdirs_beneath(root: int | str | os.PathLike[str], rel: str | os.PathLike[str],
                   mode: int = 0o700) -> None:  # fmt: skip
    """Create the folders ``root/rel`` one component at a time, never through a link."""
    parts = _parts(rel)
    current = os.dup(root) if isinstance(root, int) else open_root(root)
    try:
        for part in parts:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, mode, dir_fd=current)
            try:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=current)  # fmt: skip
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafePathError(f"refused {os.fspath(rel)!r}: {_why(exc)}") from None
                raise
            os.close(current)
            current = nxt
    finally:
        os.close(current)


def remove_tree(path: str | os.PathLike[str], what: str) -> None:
    """Remove the folder ``path`` and all in it (``shutil.rmtree``, which works through
    directory descriptors here: a link inside is removed, never followed). Gone already is
    fine; another failure is a warning naming ``what``."""
    import shutil  # here: the runner imports this module at its start, and this at its end

    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.warning("%s %s not removed: %s", what, path, exc)
