"""Content-addressed message bodies on disk, and the ``Body`` readers over them.

A body is stored once, named by its SHA-256: ``<blob_dir>/ab/cd/<hex>`` (DESIGN.md
principle 2). Writing is crash-safe: a temporary file in the same directory is written,
fsynced, renamed into place, and the directory fsynced (directories created on the way are
fsynced into their parents too), so after ``write`` returns the file survives a power
loss. A file nobody references yet (written, then the process died before the database
commit) is removed by :meth:`BlobFiles.sweep` when the store next opens.

Reference counting lives in the database (``blobs`` table); this module only knows files.
Bodies up to the inline threshold are kept in the database instead and never reach here.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import re
import secrets
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

from correo.store.base import DiskFullError, TemporaryStoreError

_TMP_PREFIX = ".tmp-"
_BLOB_NAME = re.compile(r"[0-9a-f]{64}")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_blob_name(name: str) -> bool:
    return _BLOB_NAME.fullmatch(name) is not None


def os_error(exc: OSError, what: str) -> TemporaryStoreError:
    """ENOSPC/EDQUOT become :class:`DiskFullError`; any other I/O error is temporary."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"{what}: {exc.strerror or exc}")
    return TemporaryStoreError(f"{what}: {exc.strerror or exc}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobFiles:
    """The blob directory. Methods are blocking: call them from a worker thread."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._root_name = os.fspath(root)

    def path(self, sha: str) -> Path:
        return Path(self.file_name(sha))

    def file_name(self, sha: str) -> str:
        """:meth:`path` as a string, without building a ``Path`` (once per message read)."""
        if not is_blob_name(sha):
            raise ValueError(f"not a SHA-256 hex digest: {sha!r}")
        return f"{self._root_name}/{sha[:2]}/{sha[2:4]}/{sha}"

    def exists(self, sha: str) -> bool:
        return self.path(sha).is_file()

    def _ensure_dir(self, directory: Path) -> None:
        """Create ``directory`` and any missing parents up to root, fsyncing each parent."""
        missing: list[Path] = []
        d = directory
        while not d.is_dir():
            missing.append(d)
            if d == self.root:
                break
            d = d.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                continue
            _fsync_dir(d.parent)

    def write(self, sha: str, data: bytes) -> bool:
        """Store ``data`` durably under ``sha`` unless already there; True if written.

        Raises :class:`DiskFullError` / :class:`TemporaryStoreError`, leaving no
        partial file behind.
        """
        target = self.path(sha)
        if target.is_file():
            return False
        tmp = target.parent / f"{_TMP_PREFIX}{secrets.token_hex(8)}"
        try:
            self._ensure_dir(target.parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
            _fsync_dir(target.parent)
        except OSError as exc:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            raise os_error(exc, f"writing blob {sha[:12]}") from exc
        return True

    def remove(self, sha: str) -> None:
        """Unlink a body file (after the commit that dropped its last reference)."""
        try:
            self.path(sha).unlink(missing_ok=True)
        except OSError:
            return  # the sweep at the next open retries

    def walk(self) -> Iterator[Path]:
        """Every file under the root (blobs and temporaries), in no particular order."""
        if not self.root.is_dir():
            return
        for dirpath, _dirnames, filenames in os.walk(self.root):
            for name in filenames:
                yield Path(dirpath) / name

    def sweep(self, is_referenced: Callable[[str], bool]) -> int:
        """Remove temporaries and blob files that no committed row references.

        Only safe while no other process can be writing blobs (the store takes an
        exclusive lock on the blob directory first). Returns how many files went.
        """
        removed = 0
        for path in list(self.walk()):
            name = path.name
            if name.startswith(_TMP_PREFIX) or (is_blob_name(name) and not is_referenced(name)):
                try:
                    path.unlink()
                    removed += 1
                except OSError:
                    continue
        return removed


# --------------------------------------------------------------------------- bodies


def _clip(size: int, offset: int, length: int) -> tuple[int, int]:
    """(start, end) of the requested range within ``size`` bytes."""
    start = min(max(offset, 0), size)
    end = size if length < 0 else min(size, start + length)
    return start, end


WHOLE_READ = 1 << 20
"""Reads up to this many octets are one read (one buffer); longer ones go in chunks."""

_RWF_NOWAIT: int = getattr(os, "RWF_NOWAIT", 0)
_nowait_ok = bool(_RWF_NOWAIT) and hasattr(os, "preadv")
"""Whether page-cache reads without blocking are available (Linux 4.14+)."""


def _disable_nowait() -> None:
    global _nowait_ok
    _nowait_ok = False


_local = threading.local()


def _scratch(length: int) -> memoryview:
    """A reusable buffer of ``length`` (<= WHOLE_READ) octets for this thread: cached
    reads land here and are copied once into their result, so reading does not allocate
    (and glibc does not trim and re-fault) a second 64 KB buffer per message."""
    buf: memoryview | None = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = memoryview(bytearray(WHOLE_READ))
    return buf[:length]


class InlineBody:
    """A body held in memory (inline in the database): ``prefix`` + ``data``."""

    def __init__(self, prefix: bytes, data: bytes) -> None:
        self._prefix = prefix
        self._data = data
        self.size = len(prefix) + len(data)

    async def read(self, offset: int = 0, length: int = -1) -> bytes:
        start, end = _clip(self.size, offset, length)
        if start == 0 and end == self.size:
            return self._prefix + self._data if self._prefix else self._data
        return (self._prefix + self._data)[start:end]

    async def chunks(
        self, offset: int = 0, length: int = -1, chunk: int = 65536
    ) -> AsyncIterator[bytes]:
        whole = await self.read(offset, length)
        for i in range(0, len(whole), max(chunk, 1)):
            yield whole[i : i + chunk]


class FileBody:
    """A body whose shared part is a blob file, read piecewise (never loaded whole).

    Reads of up to :data:`WHOLE_READ` octets are one ``pread``; longer ones go in chunks.
    Each read first tries the page cache from the calling (event loop) thread without
    blocking (Linux ``preadv(RWF_NOWAIT)``, which fails with EAGAIN instead of waiting
    for the disk), and only on a miss moves to a worker thread: a thread round trip costs
    more than reading 64 KB of cached data, and recently delivered or read mail is
    nearly always cached. Opening the file is a path lookup on the loop thread, like the
    store's short SQLite reads.
    """

    def __init__(self, prefix: bytes, path: str | os.PathLike[str], body_size: int) -> None:
        self._prefix = prefix
        self._path = os.fspath(path)
        self.size = len(prefix) + body_size
        self._fd = -1

    def _open(self) -> int:
        """The file, opened once on first read and kept until this Body is dropped: a
        stream already under way survives another session expunging the message (the
        open descriptor keeps the unlinked file readable), so a literal or RETR that
        announced its size always delivers every octet."""
        if self._fd < 0:
            try:
                self._fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise os_error(exc, "reading message body") from exc
            weakref.finalize(self, os.close, self._fd)
        return self._fd

    def _read_cached(self, offset: int, length: int) -> memoryview | None:
        """``length`` octets from file ``offset`` if all are in the page cache, in this
        thread's scratch buffer (valid until its next call); None on a cache miss."""
        fd = self._open()
        try:
            view = _scratch(length)
            done = 0
            while done < length:
                n = os.preadv(fd, [view[done:]], offset + done, _RWF_NOWAIT)
                if n == 0:
                    raise TemporaryStoreError("message body file is shorter than recorded")
                done += n
            return view
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                _disable_nowait()  # this kernel or file system cannot: threads from now on
                return None
            raise os_error(exc, "reading message body") from exc

    def _read_blocking(self, offset: int, length: int) -> bytes:
        """``length`` octets from file ``offset``, waiting for the disk (worker thread)."""
        fd = self._open()
        try:
            parts = []
            while length:
                data = os.pread(fd, length, offset)
                if not data:
                    raise TemporaryStoreError("message body file is shorter than recorded")
                parts.append(data)
                offset += len(data)
                length -= len(data)
            return parts[0] if len(parts) == 1 else b"".join(parts)
        except OSError as exc:
            raise os_error(exc, "reading message body") from exc

    async def _read_range(self, start: int, end: int) -> bytes:
        """Octets ``start:end`` (prefix included) with one file read, into one new
        ``bytes`` (the cached path reads into a reused scratch buffer, so a 64 KB message
        costs one 64 KB allocation here, not two)."""
        plen = len(self._prefix)
        if end <= plen:
            return self._prefix[start:end]
        head = self._prefix[start:] if start < plen else b""
        offset = max(start - plen, 0)
        length = end - plen - offset
        if _nowait_ok and length <= WHOLE_READ:
            view = self._read_cached(offset, length)
            if view is not None:
                return b"".join((head, view)) if head else bytes(view)
        data = await asyncio.to_thread(self._read_blocking, offset, length)
        return head + data if head else data

    async def read(self, offset: int = 0, length: int = -1) -> bytes:
        start, end = _clip(self.size, offset, length)
        if end - start <= WHOLE_READ:
            return await self._read_range(start, end)
        parts = [piece async for piece in self.chunks(start, end - start, WHOLE_READ)]
        return b"".join(parts)

    async def chunks(
        self, offset: int = 0, length: int = -1, chunk: int = 65536
    ) -> AsyncIterator[bytes]:
        start, end = _clip(self.size, offset, length)
        chunk = max(chunk, 1)
        plen = len(self._prefix)
        pos = start
        while pos < end and pos < plen:
            stop = min(end, plen, pos + chunk)
            yield self._prefix[pos:stop]
            pos = stop
        while pos < end:
            stop = min(end, pos + chunk)
            yield await self._read_range(pos, stop)
            pos = stop
