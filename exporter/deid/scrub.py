"""Streaming scrubbers that strip identifying metadata from non-DICOM files during an export.

Each scrubber reads its source once, in chunks, through a ``reader`` that only has
``read(n)``, and yields the new content chunk by chunk; headers are small, payloads may be
GBs, so only headers are ever held. The image payload passes byte for byte, and scrubbing
scrubbed output changes nothing. What was removed is appended to ``found`` (field names only:
old values are identifying). A file whose structure cannot be read raises ``SourceFileError``:
it is never exported unmodified, since it may carry identifiers.

Each keeps only what decoding needs (an allowlist: a segment, chunk or line of a kind it
does not know goes, whatever it holds):

- JPEG: the coding tables, frame and scan headers, restart intervals and the scans stay, and
  so do a JFIF (APP0) header without its thumbnail and an Adobe (APP14) colour-transform
  header; every other segment goes, before the first scan and between the scans of a
  progressive image: EXIF, XMP, IPTC, ICC colour profiles (their descriptions are text),
  comments, JPGn extensions, and anything after EOI (the extra images of a multi-picture
  file; a phone's motion-photo video). EXIF also holds the orientation: a photo that relied
  on it is shown unrotated, and a photo in a colour space other than sRGB loses its profile
  (its pixels are unchanged).
- PNG: only the image's own chunks stay (IHDR, PLTE, IDAT, IEND, tRNS, cHRM, gAMA, sBIT,
  sRGB, bKGD, pHYs, hIST); text, time, EXIF, ICC and any private chunk go, and so does
  anything after IEND.
- STL: a binary header is blanked and anything after the declared triangles goes; an ASCII
  file keeps only its grammar's lines (``solid``, ``facet normal``, ``outer loop``,
  ``vertex``, ``endloop``, ``endfacet``, ``endsolid``), without solid names.
- PLY (ASCII or binary): ``comment`` and ``obj_info`` header lines go; the body is unchanged.
- OBJ: only geometry (``v``, ``vt``, ``vn``, ``vp``, ``f``, ``l``, ``p``), smoothing groups
  and ``o``/``g`` lines without their names stay; comments (also after a value), material
  libraries, material names and any other statement go.
- NIfTI-1/2 (``.nii``, ``.nii.gz``): the free-text and unused fields are blanked with NULs,
  any extensions (which may hold a whole DICOM header) are zeroed in place, so every offset
  stays, and anything after the voxels goes. ``.nii.gz`` is decompressed and recompressed as
  one gzip member (level 1, no name, mtime 0).
"""

from __future__ import annotations

import math
import re
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, TypeAlias

from isal import isal_zlib

from exporter.errors import SourceFileError
from exporter.schemas import Chunk

CHUNK = 1024 * 1024
LINE_LIMIT = CHUNK  # a text line (ASCII STL, OBJ) or PLY header longer than this is refused


@dataclass(frozen=True)
class Scrubbed:
    """One kind of metadata removed from one file (for the change log; never the old value)."""

    field: str
    action: str  # "removed" or "blanked"


class Reader(Protocol):
    """What a scrubber reads from: ``read(n)`` returns up to ``n`` bytes, ``b""`` at the end."""

    def read(self, n: int, /) -> bytes: ...


Scrubber: TypeAlias = Callable[[Reader, list[Scrubbed]], Iterator[Chunk]]


def scrubber_for(name: str) -> Scrubber | None:
    """The scrubber for a file name (by extension, any case), or None if it has none."""
    lower = name.lower()
    if lower.endswith(".nii.gz"):
        return scrub_nifti_gz
    for suffixes, scrubber in _BY_SUFFIX:
        if lower.endswith(suffixes):
            return scrubber
    return None


def _record(found: list[Scrubbed], start: int, field: str, action: str) -> None:
    """Append unless this file already reported it (``start``: where this file's entries begin)."""
    item = Scrubbed(field, action)
    if item not in found[start:]:
        found.append(item)


class _Source:
    """Exact-size reads over a reader, asking it for at most ``CHUNK`` bytes at a time."""

    def __init__(self, reader: Reader, kind: str) -> None:
        self._reader = reader
        # Data that only passes through (voxels, triangles, image chunks) is read as views
        # where the reader offers them (the export's pooled buffer): no copy.
        self._pass: Callable[[int], Chunk] = getattr(reader, "read_view", reader.read)
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self.kind = kind
        self.offset = 0  # bytes taken so far, for error messages

    def fail(self, problem: str) -> SourceFileError:
        return SourceFileError(
            f"{self.kind} structure cannot be read ({problem}); the file was not exported"
        )

    def peek(self, n: int) -> bytes:
        """Up to ``n`` bytes without consuming them (fewer only at the end of the file)."""
        while len(self._buf) - self._pos < n and not self._eof:
            data = self._reader.read(CHUNK)
            if not data:
                self._eof = True
                break
            del self._buf[: self._pos]
            self._pos = 0
            self._buf += data
        return bytes(self._buf[self._pos : self._pos + n])

    def take(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer only at the end of the file)."""
        data = self.peek(n)
        self._pos += len(data)
        self.offset += len(data)
        return data

    def exact(self, n: int, what: str) -> bytes:
        """Exactly ``n`` bytes, or a ``SourceFileError`` naming ``what`` was cut short."""
        at = self.offset
        data = self.take(n)
        if len(data) < n:
            raise self.fail(f"truncated {what} at byte {at}")
        return data

    def chunks(self, n: int) -> Iterator[Chunk]:
        """The next ``n`` bytes (fewer at the end of the file) in pieces of at most ``CHUNK``."""
        while n > 0:
            if self._pos < len(self._buf):
                piece: Chunk = self.take(min(n, CHUNK, len(self._buf) - self._pos))
            elif self._eof:
                return
            else:
                piece = self._pass(min(n, CHUNK))
                if not piece:
                    self._eof = True
                    return
                self.offset += len(piece)
            n -= len(piece)
            yield piece

    def copy(self, n: int, what: str) -> Iterator[Chunk]:
        """Like ``chunks`` but exactly ``n`` bytes, or a ``SourceFileError`` at the end."""
        at, left = self.offset, n
        for piece in self.chunks(n):
            left -= len(piece)
            yield piece
        if left:
            raise self.fail(f"truncated {what} at byte {at}")

    def rest(self) -> Iterator[Chunk]:
        """Everything left, in pieces of at most ``CHUNK``."""
        return self.chunks(sys.maxsize)

    def entropy_coded(self) -> Iterator[bytes]:
        """JPEG scan data, up to the next marker other than RSTn (left unread) or the end.

        In scan data 0xFF is followed by 0x00 (a stuffed byte), RST0..7 or another 0xFF (a
        fill byte); any other byte after 0xFF makes a marker.
        """
        at = self._pos
        while True:
            buf = self._buf
            at = buf.find(0xFF, at)
            while at != -1 and at + 1 < len(buf) and buf[at + 1] in _IN_SCAN:
                at = buf.find(0xFF, at + 1)
            if at != -1 and at + 1 < len(buf):  # a marker
                if at > self._pos:
                    yield self.take(at - self._pos)
                return
            end = len(buf) if at == -1 else at  # a 0xFF last in the buffer waits for the next
            if end > self._pos:
                yield self.take(end - self._pos)
            if self._eof:
                return
            self.peek(2)
            at = self._pos


# --- JPEG -----------------------------------------------------------------------------------

_SOI, _SOS, _EOI = 0xD8, 0xDA, 0xD9
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and RSTn carry no length
_IN_SCAN = {0x00, 0xFF, *range(0xD0, 0xD8)}  # after 0xFF in scan data: not a marker


# Segments a decoder needs: frame headers (SOF0..15 but DHT, JPG and DAC), DHT, DAC, DQT,
# DRI, DNL, EXP and SOS. Everything else (APPn, COM, JPGn, DHP, ...) is metadata.
_JPEG_KEEP = {*range(0xC0, 0xD0), 0xDA, 0xDB, 0xDC, 0xDD, 0xDF} - {0xC8}
_FIXED = {0xDC: 4, 0xDD: 4, 0xDF: 3}  # DNL, DRI, EXP: (length - 2) bytes exactly


def _jpeg_keep(marker: int, body: bytes) -> bytes | None:
    """The body to keep of a segment (trimmed where it may carry more), or None to drop it."""
    if marker in _FIXED:
        return body[: _FIXED[marker] - 2] if len(body) >= _FIXED[marker] - 2 else None
    if marker in _JPEG_KEEP:
        return body
    if marker == 0xE0 and body.startswith(b"JFIF\0") and len(body) >= 14:
        return body[:12] + b"\0\0"  # version, units, density; no thumbnail
    if marker == 0xEE and body.startswith(b"Adobe") and len(body) >= 12:
        return body[:12]  # the colour transform a CMYK/YCCK decoder needs
    return None


def _jpeg_name(marker: int, body: bytes) -> str:
    """The change-log name of a dropped (or trimmed) segment."""
    if marker == 0xE1:
        if body.startswith(b"Exif\0"):
            return "EXIF (APP1)"
        if body.startswith((b"http://ns.adobe.com/xap/1.0/", b"http://ns.adobe.com/xmp/")):
            return "XMP (APP1)"
    if marker == 0xE2:
        return "ICC colour profile (APP2)" if body.startswith(b"ICC_PROFILE\0") else "APP2"
    if marker == 0xED and body.startswith(b"Photoshop 3.0\0"):
        return "IPTC/Photoshop (APP13)"
    if 0xE0 <= marker <= 0xEF:
        return f"APP{marker - 0xE0}"
    if marker == 0xFE:
        return "JPEG comment"
    return f"JPEG segment 0xFF{marker:02X}"


def scrub_jpeg(reader: Reader, found: list[Scrubbed]) -> Iterator[Chunk]:
    """JPEG with only the segments decoding needs, nor anything after EOI; scans unchanged."""
    src, start = _Source(reader, "JPEG"), len(found)
    if src.take(2) != b"\xff\xd8":
        raise src.fail("no SOI marker at the start")
    out = bytearray(b"\xff\xd8")  # kept segments not yet yielded
    scans = 0
    while True:
        at = src.offset
        byte = src.take(1)
        if not byte:
            if scans:
                raise src.fail("the file ends before the end of the image (no EOI marker)")
            raise src.fail("the file ends before the image data (no SOS marker)")
        if byte != b"\xff":
            raise src.fail(f"expected a marker at byte {at}, found 0x{byte[0]:02X}")
        marker = src.take(1)
        while marker == b"\xff":  # fill bytes: allowed before any marker, dropped here
            marker = src.take(1)
        if not marker:
            raise src.fail(f"truncated marker at byte {at}")
        code = marker[0]
        if code == _EOI and scans:
            yield bytes(out + b"\xff\xd9")
            if src.peek(1):  # a trailer, a second image: not part of this one, may hold anything
                _record(found, start, "data after the image (EOI)", "removed")
            return
        if code in _STANDALONE:
            out += b"\xff" + marker
            continue
        if code in (0x00, _SOI, _EOI):
            where = " between the scans" if scans else " before the image data"
            raise src.fail(f"unexpected marker 0xFF{code:02X} at byte {at}{where}")
        size = src.exact(2, f"segment 0xFF{code:02X}")
        length = int.from_bytes(size, "big")
        if length < 2:
            raise src.fail(f"segment 0xFF{code:02X} at byte {at} has length {length}")
        body = src.exact(length - 2, f"segment 0xFF{code:02X}")
        kept = _jpeg_keep(code, body)
        if kept is None:
            _record(found, start, _jpeg_name(code, body), "removed")
        else:
            if kept != body:
                _record(found, start, _jpeg_name(code, body), "cleaned")
            out += b"\xff" + marker + (len(kept) + 2).to_bytes(2, "big") + kept
        if code == _SOS:
            scans += 1
            yield bytes(out)
            out.clear()
            yield from src.entropy_coded()
        elif len(out) >= CHUNK:
            yield bytes(out)
            out.clear()


# --- PNG ------------------------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The chunks of the image itself; text, time, EXIF, ICC profiles and private chunks go.
_PNG_KEEP = {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"cHRM", b"gAMA", b"sBIT", b"sRGB",
             b"bKGD", b"pHYs", b"hIST"}  # fmt: skip


def scrub_png(reader: Reader, found: list[Scrubbed]) -> Iterator[Chunk]:
    """PNG with only the image's own chunks, nor anything after IEND; the rest unchanged."""
    src, start = _Source(reader, "PNG"), len(found)
    if src.take(8) != _PNG_SIGNATURE:
        raise src.fail("no PNG signature at the start")
    yield _PNG_SIGNATURE
    while True:
        at = src.offset
        head = src.take(8)
        if not head:
            raise src.fail("the file ends before the IEND chunk")
        if len(head) < 8:
            raise src.fail(f"truncated chunk header at byte {at}")
        length, kind = struct.unpack(">I4s", head)
        if length >= 1 << 31 or not kind.isalpha():
            raise src.fail(f"invalid chunk at byte {at}")
        # Body and CRC stream through (IDAT can be large) whether kept or dropped.
        body = src.copy(length + 4, f"{kind.decode()} chunk")
        if kind not in _PNG_KEEP:
            _record(found, start, f"PNG {kind.decode()}", "removed")
            for _ in body:
                pass
        else:
            yield head
            yield from body
        if kind == b"IEND":
            break
    if src.peek(1):  # trailing bytes are not part of the image but may hold anything
        _record(found, start, "PNG data after IEND", "removed")


# --- STL ------------------------------------------------------------------------------------

BLANK_STL_HEADER = b"binary STL".ljust(80, b" ")  # must not start with "solid"
# Printable ASCII, whitespace, DOS end-of-file and UTF-8 bytes: a binary STL has NULs in its
# triangle count (below 2**24 triangles) and, almost surely, in its first triangles.
_TEXT_BYTES = bytes([9, 10, 11, 12, 13, 26, *range(32, 127), *range(128, 256)])
_SOLID_LINE = re.compile(rb"(?:^|(?<=\r))([ \t]*(?:end)?solid)([ \t][^\r\n]*)", re.M | re.I)
_NUMBER = rb"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_STL_GRAMMAR = (
    rb"(?:facet[ \t]+normal(?:[ \t]+"
    + _NUMBER
    + rb"){3}|outer[ \t]+loop|vertex(?:[ \t]+"
    + _NUMBER
    + rb"){3}|endloop|endfacet|(?:end)?solid)?"
)
# A line that is not the ASCII STL grammar (a solid's name already removed), with its end.
_STL_OTHER = re.compile(
    rb"(?im)(?:^|(?<=\r))(?![ \t]*"
    + _STL_GRAMMAR
    + rb"[ \t]*(?:\r\n|\n|\r|$))[^\r\n]*(?:\r\n|\n|\r)?"
)


def scrub_stl(reader: Reader, found: list[Scrubbed]) -> Iterator[Chunk]:
    """STL with a blank binary header, or ASCII without solid names; triangles unchanged."""
    src, start = _Source(reader, "STL"), len(found)
    head = src.peek(1024)
    if head.lstrip(b" \t\r\n")[:5].lower() == b"solid" and not head.translate(None, _TEXT_BYTES):
        yield from _ascii_stl(src, found, start)
        return
    header = src.take(84)
    if len(header) < 84:
        raise src.fail(f"{len(header)} bytes is too short for a binary STL")
    if header[:80] != BLANK_STL_HEADER:
        _record(found, start, "STL header", "blanked")
    yield BLANK_STL_HEADER + header[80:]
    triangles = int.from_bytes(header[80:84], "little")
    yield from src.copy(50 * triangles, "STL triangles")
    if any(piece for piece in src.rest()):  # what follows the triangles may hold anything
        if not triangles:
            raise src.fail("it declares no triangles but has data after its header")
        _record(found, start, "STL data after the triangles", "removed")


def _ascii_stl(src: _Source, found: list[Scrubbed], start: int) -> Iterator[Chunk]:
    changed = {"name": False, "other": False}

    def blank(match: re.Match[bytes]) -> bytes:
        if not match[2].strip():
            return match[0]  # only trailing blanks: no name to remove
        changed["name"] = True
        return match[1]

    def drop(match: re.Match[bytes]) -> bytes:
        changed["other"] = True
        return b""

    def lines(block: bytes) -> bytes:
        # The regex is slow on megabytes of facets; "solid" is normally in the first and last.
        block = _SOLID_LINE.sub(blank, block) if b"solid" in block.lower() else block
        return _STL_OTHER.sub(drop, block)

    pending = b""
    for chunk in src.rest():
        data = pending + chunk
        # Cut after the last line end: a line straddling chunks waits for its end.
        cut = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
        if len(data) - cut > LINE_LIMIT:
            raise src.fail(f"a line longer than {LINE_LIMIT} bytes before byte {src.offset}")
        pending = data[cut:]
        if cut:
            yield lines(data[:cut])
    if pending:
        yield lines(pending)
    if changed["name"]:
        _record(found, start, "STL solid name", "blanked")
    if changed["other"]:
        _record(found, start, "STL line outside the STL grammar", "removed")


# --- PLY ------------------------------------------------------------------------------------

_PLY_DROP = {b"comment": "PLY comment", b"obj_info": "PLY obj_info"}


def scrub_ply(reader: Reader, found: list[Scrubbed]) -> Iterator[Chunk]:
    """PLY (ASCII or binary) without comment and obj_info header lines; the body unchanged."""
    src, start = _Source(reader, "PLY"), len(found)
    head = src.peek(LINE_LIMIT)  # the header is text in every PLY format
    if not head.startswith((b"ply\n", b"ply\r\n")):
        raise src.fail('no "ply" line at the start')
    kept, pos = bytearray(), 0
    while True:
        end = head.find(b"\n", pos) + 1
        if not end and len(head) < LINE_LIMIT:  # the whole file is read: its last line
            end = len(head)
        if end <= pos:
            raise src.fail(f"no end_header line in the first {LINE_LIMIT} bytes")
        line, pos = head[pos:end], end
        words = line.split(None, 1)
        dropped = _PLY_DROP.get(words[0]) if words else None
        if dropped:
            _record(found, start, dropped, "removed")
        else:
            kept += line
        if line.split() == [b"end_header"]:
            break
    src.take(pos)
    yield bytes(kept)
    yield from src.rest()


# --- OBJ ------------------------------------------------------------------------------------

# A line that stays as it is: geometry and smoothing groups, numbers only, or a blank line.
_OBJ_PLAIN = rb"[ \t]*(?:(?:v[tnp]?|f|l|p)(?:[ \t]+[-+0-9.eE/]+)*|s[ \t]+\w+)?[ \t]*"
_OBJ_OTHER = re.compile(rb"(?m)(?:^|(?<=\r))(?!" + _OBJ_PLAIN + rb"(?:\r\n|\n|\r|$))")


def scrub_obj(reader: Reader, found: list[Scrubbed]) -> Iterator[Chunk]:
    """Wavefront OBJ with geometry, smoothing groups and unnamed objects and groups only."""
    src, start = _Source(reader, "OBJ"), len(found)
    pending = b""
    for chunk in src.rest():
        data = pending + chunk
        # Cut after the last line end; a line straddling chunks (or a CR that may be the first
        # half of a CR LF) waits for the next one.
        cut = max(data.rfind(b"\n"), data.rfind(b"\r", 0, len(data) - 1)) + 1
        if len(data) - cut > LINE_LIMIT:
            raise src.fail(f"a line longer than {LINE_LIMIT} bytes before byte {src.offset}")
        pending = data[cut:]
        if cut and (block := _obj_lines(src, data[:cut], found, start)):
            yield block
    if pending and (block := _obj_lines(src, pending, found, start)):
        yield block


def _obj_lines(src: _Source, block: bytes, found: list[Scrubbed], start: int) -> bytes:
    """``block`` (whole lines) scrubbed; most blocks are vertices and faces only."""
    if b"\0" in block:
        raise src.fail(f"not a text file (a NUL byte before byte {src.offset})")
    if not _OBJ_OTHER.search(block):
        return block
    out = []
    for line in block.splitlines(keepends=True):
        text = line.rstrip(b"\r\n")
        if re.fullmatch(_OBJ_PLAIN, text):
            out.append(line)
            continue
        code, hashed, _ = text.partition(b"#")  # a comment may follow a value too
        if hashed:
            _record(found, start, "OBJ comment", "removed")
        stripped = code.strip(b" \t")
        keyword = stripped.replace(b"\t", b" ").partition(b" ")[0]
        if keyword in (b"o", b"g"):
            if stripped != keyword:
                _record(found, start, "OBJ object/group name", "blanked")
            out.append(keyword + line[len(text) :])
        elif re.fullmatch(_OBJ_PLAIN, code):
            if stripped:  # a value line that had a comment after it
                out.append(code.rstrip(b" \t") + line[len(text) :])
        elif keyword == b"mtllib":  # names files, which may be named after the patient
            _record(found, start, "OBJ material library", "removed")
        elif keyword == b"usemtl":
            _record(found, start, "OBJ material name", "removed")
        else:
            _record(found, start, "OBJ other statement", "removed")
    return b"".join(out)


# --- NIfTI ----------------------------------------------------------------------------------

# (name, offset, size) of the free-text fields; data_type is an unused Analyze leftover.
_NIFTI_TEXT = {
    348: (
        ("data_type", 4, 10),
        ("db_name", 14, 18),
        ("descrip", 148, 80),
        ("aux_file", 228, 24),
        ("intent_name", 328, 16),
    ),
    540: (
        ("descrip", 240, 80),
        ("aux_file", 320, 24),
        ("intent_name", 508, 16),
        ("unused_str", 525, 15),
    ),
}


def scrub_nifti(reader: Reader, found: list[Scrubbed]) -> Iterator[Chunk]:
    """NIfTI-1/2 (``.nii``) with blank text fields and zeroed extensions; voxels unchanged."""
    return _nifti(_Source(reader, "NIfTI"), found)


def scrub_nifti_gz(reader: Reader, found: list[Scrubbed]) -> Iterator[Chunk]:
    """``scrub_nifti`` through gzip: the output is one gzip member, level 1, mtime 0, no name."""
    # ISA-L: a volume is all decompressed and compressed again, 3-4x faster than zlib's.
    packer = isal_zlib.compressobj(1, isal_zlib.DEFLATED, 31)
    for piece in _nifti(_Source(_Gunzip(reader), "NIfTI"), found):
        if out := packer.compress(piece):
            yield out
    yield packer.flush()


def _nifti(src: _Source, found: list[Scrubbed]) -> Iterator[Chunk]:
    start = len(found)
    first = src.peek(4).ljust(4, b"\0")
    # sizeof_hdr tells the version and, read either way round, the byte order.
    order = next((o for o in "<>" if struct.unpack(o + "i", first)[0] in _NIFTI_TEXT), "")
    if not order:
        raise SourceFileError(
            "not a NIfTI-1/2 file (sizeof_hdr is neither 348 nor 540); the file was not exported"
        )
    size: int = struct.unpack(order + "i", first)[0]
    header = bytearray(src.exact(size, "NIfTI header"))
    magic = bytes(header[344:348] if size == 348 else header[4:8])
    single = {b"n+1\0": True, b"ni1\0": False, b"n+2\0": True, b"ni2\0": False}.get(magic)
    if single is None or (size == 348) != magic.endswith(b"1\0"):
        raise SourceFileError(f"not a NIfTI-1/2 file (magic {magic!r}); the file was not exported")
    for name, offset, length in _NIFTI_TEXT[size]:
        if header[offset : offset + length].count(0) != length:
            header[offset : offset + length] = bytes(length)
            _record(found, start, f"NIfTI {name}", "blanked")
    ext = src.take(4)
    yield bytes(header) + bytes(len(ext))  # extension[0] = 0: readers skip what was there
    # Extensions (and any padding) run up to the voxels, or to the end of a header-only file.
    end = _vox_offset(header, order) if single else sys.maxsize
    dirty = ext.count(0) != len(ext)
    for piece in src.chunks(end - size - 4):
        dirty = dirty or any(piece)  # a view has no count(); any() stops at the first non-zero byte
        yield bytes(len(piece))
    if dirty:
        _record(found, start, "NIfTI extension", "blanked")
    voxels = voxel_bytes(header, order)
    if voxels is None:
        yield from src.rest()
        return
    yield from src.chunks(voxels)
    if any(piece for piece in src.rest()):  # past the voxels: not part of the image
        _record(found, start, "NIfTI data after the voxels", "removed")


def voxel_bytes(header: bytes | bytearray, order: str) -> int | None:
    """How many bytes the voxels take (dims times bits per voxel), or None if the header
    does not say sensibly."""
    if len(header) == 348:
        dims = struct.unpack_from(order + "8h", header, 40)
        bitpix = struct.unpack_from(order + "h", header, 72)[0]
    else:
        dims = struct.unpack_from(order + "8q", header, 16)
        bitpix = struct.unpack_from(order + "h", header, 14)[0]
    if not 1 <= dims[0] <= 7 or bitpix <= 0 or bitpix % 8:
        return None
    count = math.prod(max(d, 1) for d in dims[1 : dims[0] + 1])
    return count * bitpix // 8 if count * bitpix // 8 < 1 << 50 else None


def _vox_offset(header: bytearray, order: str) -> int:
    """Where the voxels start; a nonsensical value leaves nothing between header and voxels."""
    if len(header) == 348:
        value = struct.unpack_from(order + "f", header, 108)[0]
        return int(value) if math.isfinite(value) else 0
    return int(struct.unpack_from(order + "q", header, 168)[0])


class _Gunzip:
    """The decompressed stream of a gzip reader (any number of members), as a reader.

    Output is capped per call, so a small, highly compressed file never inflates in memory.
    """

    def __init__(self, reader: Reader) -> None:
        self._reader = reader
        self._unzip = isal_zlib.decompressobj(31)
        self._tail = b""  # compressed input not yet fed through

    def read(self, n: int) -> bytes:
        while True:
            if self._unzip.eof and not self._next_member():
                return b""
            data = self._tail or self._reader.read(CHUNK)
            try:
                out = self._unzip.decompress(data, min(n, CHUNK))
            except Exception as exc:  # zlib.error or ISA-L's IsalError: unreadable data
                raise self._fail(str(exc)) from None
            self._tail = self._unzip.unconsumed_tail
            if out:
                return out
            if not data and not self._unzip.eof:
                raise self._fail("the compressed data end early")

    def _next_member(self) -> bool:
        rest = self._unzip.unused_data.lstrip(b"\0")  # gzip allows NUL padding at the end
        while not rest:
            more = self._reader.read(CHUNK)
            if not more:
                return False
            rest = more.lstrip(b"\0")
        self._unzip = isal_zlib.decompressobj(31)
        self._tail = rest
        return True

    @staticmethod
    def _fail(problem: str) -> SourceFileError:
        return SourceFileError(f"gzip data cannot be read ({problem}); the file was not exported")


_BY_SUFFIX: tuple[tuple[tuple[str, ...], Scrubber], ...] = (
    ((".jpg", ".jpeg"), scrub_jpeg),
    ((".png",), scrub_png),
    ((".stl",), scrub_stl),
    ((".ply",), scrub_ply),
    ((".obj",), scrub_obj),
    ((".nii",), scrub_nifti),
)
