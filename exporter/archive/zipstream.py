"""A small streaming ZIP64 writer: entries are appended in order, each written once.

Why not :mod:`zipfile`: the export compresses entries on worker threads and appends the
finished bytes here in a fixed order, which ``zipfile`` has no public way to do. Every entry
carries ZIP64 sizes (so archives past 4 GiB, or with files past 4 GiB, need nothing special),
UTF-8 names, the source's modification time (DOS time plus the UT extra field), and regular
file permissions. Writes are strictly sequential (a streamed entry's CRC and sizes follow
its data in a ZIP64 data descriptor), so a caller can hash the archive as it is written.
"""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

# ISA-L's CRC-32 (the ZIP and zlib polynomial) runs at tens of GB/s where zlib's manages ~3:
# without it the CRC would cost half as much CPU as each SHA-256 pass of an export.
from isal.isal_zlib import crc32 as crc32

from exporter.schemas import Chunk


class Sink(Protocol):
    """Where the archive goes: a file, or :class:`exporter.archive.sourceio.ArchiveWriter`."""

    def write(self, data: Chunk, /) -> int: ...


STORED = 0
DEFLATED = 8
_VERSION = 45  # 4.5: ZIP64
_FLAGS = 0x0800  # names are UTF-8
_DESCRIPTOR = 0x0008  # CRC and sizes follow the data
_ZIP64_EXTRA_LOCAL = struct.Struct("<HHQQ")  # id, size, uncompressed, compressed
_UT_EXTRA_LOCAL = struct.Struct("<HHBI")  # id, size, flags (mtime), mtime
_LOCAL = struct.Struct("<IHHHHHIIIHH")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")


@dataclass(frozen=True)
class _Record:
    name: bytes
    method: int
    flags: int
    dos_time: int
    dos_date: int
    mtime: int
    crc: int
    compressed: int
    size: int
    offset: int


def _dos_datetime(mtime: float) -> tuple[int, int]:
    t = time.localtime(min(max(mtime, 315532800), 4354819199))  # DOS time: 1980 to 2107
    dos_time = t.tm_hour << 11 | t.tm_min << 5 | t.tm_sec // 2
    dos_date = (t.tm_year - 1980) << 9 | t.tm_mon << 5 | t.tm_mday
    return dos_time, dos_date


class ZipWriter:
    """Appends entries to a file (never sought); :meth:`close` writes the directory."""

    def __init__(self, fileobj: Sink) -> None:
        self.fh = fileobj
        self.offset = 0  # bytes written so far: the file is never sought
        self.records: list[_Record] = []
        self.names: set[str] = set()
        self.closed = False

    def _write(self, data: Chunk) -> None:
        self.fh.write(data)
        self.offset += len(data)

    def _local_header(
        self,
        name: bytes,
        method: int,
        mtime: float,
        crc: int,
        compressed: int,
        size: int,
        flags: int = _FLAGS,
    ) -> bytes:
        dos_time, dos_date = _dos_datetime(mtime)
        extra = _ZIP64_EXTRA_LOCAL.pack(0x0001, 16, size, compressed) + _UT_EXTRA_LOCAL.pack(
            0x5455, 5, 1, int(mtime) & 0xFFFFFFFF
        )
        # fmt: off
        header = _LOCAL.pack(
            0x04034B50, _VERSION, flags, method, dos_time, dos_date,
            crc, 0xFFFFFFFF, 0xFFFFFFFF, len(name), len(extra),
        )
        # fmt: on
        return header + name + extra

    def _check_name(self, name: str) -> bytes:
        if self.closed:
            raise ValueError("the archive is closed")
        if name in self.names:
            raise ValueError(f"duplicate entry name {name!r}")
        self.names.add(name)
        return name.encode("utf-8")

    def add_prepared(
        self,
        name: str,
        chunks: Iterable[Chunk],
        *,
        method: int,
        crc: int,
        size: int,
        compressed: int,
        mtime: float,
    ) -> int:
        """Append an entry whose data is already compressed (or stored) and measured.

        Returns the number of bytes written to the archive.
        """
        encoded = self._check_name(name)
        offset = self.offset
        self._write(self._local_header(encoded, method, mtime, crc, compressed, size))
        data_start = self.offset
        for chunk in chunks:
            self._write(chunk)
        written = self.offset - offset
        if self.offset - data_start != compressed:
            raise ValueError(f"{name}: data size differs from the {compressed} bytes declared")
        self._remember(encoded, method, mtime, crc, compressed, size, offset, _FLAGS)
        return written

    def open_entry(self, name: str, *, method: int, level: int, mtime: float) -> EntryStream:
        """Start an entry whose data arrives in chunks (for files too large to hold)."""
        encoded = self._check_name(name)
        offset = self.offset
        self._write(self._local_header(encoded, method, mtime, 0, 0, 0, _FLAGS | _DESCRIPTOR))
        return EntryStream(self, encoded, method, level, mtime, offset)

    def _remember(
        self,
        name: bytes,
        method: int,
        mtime: float,
        crc: int,
        compressed: int,
        size: int,
        offset: int,
        flags: int,
    ) -> None:
        dos_time, dos_date = _dos_datetime(mtime)
        self.records.append(
            _Record(
                name, method, flags, dos_time, dos_date, int(mtime), crc, compressed, size, offset
            )
        )

    def close(self) -> int:
        """Write the central directory and the ZIP64 end records; return the archive size."""
        if self.closed:
            return self.offset
        start = self.offset
        for r in self.records:
            extra = struct.pack("<HHQQQ", 0x0001, 24, r.size, r.compressed, r.offset)
            extra += struct.pack("<HHBI", 0x5455, 5, 1, r.mtime & 0xFFFFFFFF)
            # fmt: off
            header = _CENTRAL.pack(
                0x02014B50, 3 << 8 | _VERSION, _VERSION, r.flags, r.method, r.dos_time,
                r.dos_date, r.crc, 0xFFFFFFFF, 0xFFFFFFFF, len(r.name), len(extra), 0, 0, 0,
                0o100644 << 16, 0xFFFFFFFF,
            )
            # fmt: on
            self._write(header + r.name + extra)
        end = self.offset
        count = len(self.records)
        short = min(count, 0xFFFF)
        # fmt: off
        self._write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 3 << 8 | _VERSION, _VERSION,
                                0, 0, count, count, end - start, start))
        self._write(struct.pack("<IIQI", 0x07064B50, 0, end, 1))
        self._write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, short, short,
                                0xFFFFFFFF, 0xFFFFFFFF, 0))
        # fmt: on
        self.closed = True
        return self.offset


class EntryStream:
    """One entry being written chunk by chunk; compresses when asked, counts and CRCs."""

    def __init__(
        self, writer: ZipWriter, name: bytes, method: int, level: int, mtime: float, offset: int
    ) -> None:
        self.writer = writer
        self.name = name
        self.method = method
        self.mtime = mtime
        self.offset = offset
        self.crc = 0
        self.size = 0
        self.compressed = 0
        self._zip = zlib.compressobj(level, zlib.DEFLATED, -15) if method == DEFLATED else None

    def write(self, chunk: Chunk) -> int:
        """Add data; returns the number of bytes that reached the archive."""
        self.crc = crc32(chunk, self.crc)
        self.size += len(chunk)
        out = self._zip.compress(chunk) if self._zip else chunk
        self.writer._write(out)
        self.compressed += len(out)
        return len(out)

    def close(self) -> int:
        """Finish the entry with its data descriptor; returns the bytes written last."""
        tail = self._zip.flush() if self._zip else b""
        self.writer._write(tail)
        self.compressed += len(tail)
        descriptor = struct.pack("<IIQQ", 0x08074B50, self.crc, self.compressed, self.size)
        self.writer._write(descriptor)
        self.writer._remember(
            self.name,
            self.method,
            self.mtime,
            self.crc,
            self.compressed,
            self.size,
            self.offset,
            _FLAGS | _DESCRIPTOR,
        )
        return len(tail) + len(descriptor)
