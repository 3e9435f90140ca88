"""Reading stored files and writing archives with as little copying as the data allows.

Every reader of stored files opens them through :func:`open_source`, which refuses anything
that could leave the data root. The export reads each file up to ``PREPARE_LIMIT`` whole,
in one call, into a buffer from a :class:`BufferPool`, and everything after (the source's
SHA-256, the header rewrite, the entry's SHA-256 and CRC, the write, the archive's SHA-256)
works on views of that buffer. The buffer goes back to the pool once the archive's hash
has passed over it. Why a pool: on this kind of machine a fresh allocation per file costs
more than reading the file (the kernel zeroes every new page), about 0.3 ms of every
0.5 MiB DICOM slice; reused buffers cost nothing after the first.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
import queue
import stat
import threading
from collections.abc import Callable
from io import FileIO
from pathlib import Path
from typing import IO, BinaryIO

from exporter.errors import SourceFileError
from exporter.zipstream import Chunk

CHUNK = 1024 * 1024
FLUSH_EVERY = 32 * 1024 * 1024
HASH_BATCH = 1024 * 1024  # bytes handed to the archive's hashing thread at a time
_SMALLEST = 64 * 1024


def source_path(data_root: Path, relative: str, checked: dict[str, bool] | None = None) -> str:
    """The file behind a registry path, refusing anything that could leave the data root.

    The final component is opened with O_NOFOLLOW; the directories above it are resolved
    here, once per directory when ``checked`` (a cache owned by one build) is given.
    """
    parts = relative.split("/")
    if relative.startswith("/") or "\\" in relative or any(p in ("", ".", "..") for p in parts):
        raise SourceFileError(f"{relative}: not a plain relative path; re-register the file")
    root = str(data_root)
    directory = root + "/" + relative.rpartition("/")[0] if len(parts) > 1 else root
    safe = checked.get(directory) if checked is not None else None
    if safe is None:
        real = os.path.realpath(directory)
        safe = real == directory and (real == root or real.startswith(root + "/"))
        if checked is not None:
            checked[directory] = safe
    if not safe:
        raise SourceFileError(f"{relative}: leads outside the data root (a link); refused")
    return root + "/" + relative


def open_source(data_root: Path, relative: str, checked: dict[str, bool] | None = None) -> FileIO:
    """The registered file at ``relative``, opened unbuffered for reading: never through a
    link out of the data root or a symbolic link, never a FIFO or device (every reader of
    stored files goes through here)."""
    path = source_path(data_root, relative, checked)
    try:
        # O_NONBLOCK: a FIFO at a registered path must not hang the reader.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise SourceFileError(f"{relative}: missing from storage") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SourceFileError(f"{relative}: is a symbolic link; refused") from None
        raise SourceFileError(f"{relative}: unreadable ({exc.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SourceFileError(f"{relative}: not a regular file; refused")
    return FileIO(fd, "rb")


def _size_class(size: int) -> int:
    """Buffers come in sizes 1/16 of a power of two apart (at most ~6% unused), so files of
    one series, and of similar series, share them."""
    if size <= _SMALLEST:
        return _SMALLEST
    step = 1 << (size.bit_length() - 5)  # 16 sizes from one power of two to the next
    return -(-size // step) * step


class BufferPool:
    """Read buffers handed out and taken back, kept for reuse up to ``keep`` bytes.

    A buffer is an anonymous memory map: the kernel hands it out zeroed page by page as the
    first read fills it (with the GIL released), where ``bytearray(n)`` would zero it all
    first while holding the GIL.
    """

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._free: dict[int, list[mmap.mmap]] = {}
        self._kept = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> mmap.mmap:
        """A buffer of at least ``size`` bytes (contents undefined)."""
        wanted = _size_class(size)
        with self._lock:
            free = self._free.get(wanted)
            if free:
                self._kept -= wanted
                return free.pop()
        return mmap.mmap(-1, wanted)

    def give(self, buf: mmap.mmap) -> None:
        """Take a buffer back; nothing may use it any more."""
        with self._lock:
            # Make room by dropping buffers of other sizes: the sizes in demand change.
            while self._kept + len(buf) > self.keep and self._kept:
                size = max(self._free, key=lambda s: len(self._free[s]) * s)
                self._free[size].pop()
                self._kept -= size
                if not self._free[size]:
                    del self._free[size]
            if self._kept + len(buf) <= self.keep:
                self._free.setdefault(len(buf), []).append(buf)
                self._kept += len(buf)


class Loaded:
    """A source file read whole into a pooled buffer, verified, and read on from there by a
    transform: :meth:`read` gives bytes (for parsers), :meth:`read_view` views (for data
    that only passes through)."""

    def __init__(self, buf: mmap.mmap, data: memoryview, sha256: str) -> None:
        self.buf = buf
        self.data = data
        self.sha256 = sha256
        self.pos = 0

    def read_view(self, n: int = -1) -> memoryview:
        end = len(self.data) if n < 0 else min(self.pos + n, len(self.data))
        view = self.data[self.pos : end]
        self.pos = end
        return view

    def read(self, n: int = -1) -> bytes:
        return bytes(self.read_view(n))


def load(raw: FileIO, name: str, size: int, sha256: str, pool: BufferPool) -> Loaded:
    """Read an open source file whole (one more byte is asked for, to notice growth) and
    check it against the registry's size and SHA-256."""
    buf = pool.take(size + 1)
    view = memoryview(buf)[: size + 1]
    got = 0
    try:
        while got < len(view) and (n := raw.readinto(view[got:])):
            got += n
    except OSError as exc:
        raise SourceFileError(f"{name}: unreadable ({exc.strerror})") from None
    data = view[:got]
    digest = hashlib.sha256(data).hexdigest()
    if got != size or digest != sha256:
        data.release()
        view.release()
        pool.give(buf)
        now = os.fstat(raw.fileno()).st_size if got > size else got  # only size + 1 was read
        raise SourceFileError(
            f"{name}: changed since it was registered (size {now} against {size}, or a "
            "different SHA-256); register the directory again"
        )
    return Loaded(buf, data, digest)


class HashingReader:
    """Reads a (large) source in chunks, hashing what passes; a transform reads through it."""

    def __init__(self, fh: BinaryIO, check: Callable[[], None]) -> None:
        self.fh = fh
        self.sha = hashlib.sha256()
        self.size = 0
        self.check = check

    def read(self, n: int = -1) -> bytes:
        self.check()
        data = self.fh.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data

    read_view = read

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


class _Release:
    """A buffer to give back to the pool once the hash has passed what came before it."""

    __slots__ = ("buf",)

    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf


class HashingWriter:
    """A write-only file that hashes what is written and starts its writeback early.

    The archive's SHA-256 is computed on a thread of its own (hashlib releases the GIL) from
    the very chunks that were written, handed over in batches; buffers those chunks view
    go back to ``pool`` after it. Another thread asks the kernel to write back every
    ``FLUSH_EVERY`` bytes, so the final fsync only waits for the tail. Both queues are
    bounded: at most a few batches wait to be hashed.
    """

    def __init__(self, fh: IO[bytes], pool: BufferPool | None = None) -> None:
        self.fh = fh
        self.pool = pool
        self.sha = hashlib.sha256()
        self.queue: queue.Queue[list[Chunk | _Release] | None] = queue.Queue(maxsize=8)
        self.flushes: queue.Queue[bool] = queue.Queue()
        self.unflushed = 0
        self.batch: list[Chunk | _Release] = []
        self.batched = 0
        self.threads = [
            threading.Thread(target=self._hash, name="archive-sha256", daemon=True),
            threading.Thread(target=self._flush, name="archive-flush", daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _hash(self) -> None:
        while (batch := self.queue.get()) is not None:
            for item in batch:
                if isinstance(item, _Release):
                    if self.pool is not None:
                        self.pool.give(item.buf)
                else:
                    self.sha.update(item)

    def _flush(self) -> None:
        while self.flushes.get():
            with contextlib.suppress(OSError, ValueError):
                os.fdatasync(self.fh.fileno())

    def _hand_over(self) -> None:
        if self.batch:
            self.queue.put(self.batch)
            self.batch, self.batched = [], 0

    def write(self, data: Chunk) -> int:
        written = self.fh.write(data)
        self.batch.append(data)
        self.batched += written
        if self.batched >= HASH_BATCH:
            self._hand_over()
        self.unflushed += written
        if self.unflushed >= FLUSH_EVERY:
            self.unflushed = 0
            self.fh.flush()
            self.flushes.put(True)
        return written

    def release_after(self, buf: mmap.mmap) -> None:
        """Give ``buf`` back to the pool once everything written so far is hashed."""
        self.batch.append(_Release(buf))

    def hexdigest(self) -> str:
        """The SHA-256 of everything written (waits for the hashing thread)."""
        self.close()
        return self.sha.hexdigest()

    def close(self) -> None:
        if self.threads[0].is_alive():
            self._hand_over()
            self.queue.put(None)
            self.flushes.put(False)
            for thread in self.threads:
                thread.join()
