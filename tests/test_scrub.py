"""Metadata scrubbers for non-DICOM files: identifiers gone, payload intact, streamed, idempotent.

The inputs are the demo generator's real files (which carry identifiers on purpose) and files
built here with Pillow, struct and zlib; every scrubber reads through a reader that hands out
awkwardly small pieces as well as whole chunks.
"""

from __future__ import annotations

import gzip
import io
import struct
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from PIL.ExifTags import IFD

from exporter.demo_data import DemoManifest, DemoPatient, write_demo_tree
from exporter.errors import SourceFileError
from exporter.scrub import (
    BLANK_STL_HEADER,
    CHUNK,
    Scrubbed,
    Scrubber,
    scrub_jpeg,
    scrub_nifti,
    scrub_nifti_gz,
    scrub_png,
    scrub_stl,
    scrubber_for,
)

PIECES = [7, CHUNK]  # bytes per read: straddles every boundary, then the real chunk size
MAX_YIELD = 4 * 1024 * 1024


class PieceReader:
    """Hands out ``data`` at most ``piece`` bytes per read; remembers the largest request."""

    def __init__(self, data: bytes, piece: int) -> None:
        self.data = data
        self.piece = piece
        self.pos = 0
        self.largest = 0

    def read(self, n: int) -> bytes:
        self.largest = max(self.largest, n)
        out = self.data[self.pos : self.pos + min(n, self.piece)]
        self.pos += len(out)
        return out


class StreamReader:
    """A reader over generated pieces: the file never exists whole, in memory or on disk."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self.pieces = pieces
        self.buf = b""
        self.largest = 0

    def read(self, n: int) -> bytes:
        self.largest = max(self.largest, n)
        while len(self.buf) < n:
            more = next(self.pieces, None)
            if more is None:
                break
            self.buf += more
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def scrub(scrubber: Scrubber, data: bytes, piece: int = CHUNK) -> tuple[bytes, list[Scrubbed]]:
    found: list[Scrubbed] = []
    reader = PieceReader(data, piece)
    out = b"".join(scrubber(reader, found))
    assert reader.largest <= CHUNK
    return out, found


def assert_idempotent(scrubber: Scrubber, out: bytes) -> None:
    again, found = scrub(scrubber, out, 7)
    assert again == out
    assert found == []


def identifying(person: DemoPatient) -> list[bytes]:
    """The strings that must not survive: names both ways round, numbers, serials, staff."""
    ident = person.identity
    values = [
        ident["PatientName"],
        ident["PatientName"].replace("^", " "),
        ident["PatientName"].split("^")[0],
        ident["PatientID"],
        ident["AccessionNumber"],
        ident["CameraSerialNumber"],
        ident["OperatorsName"],
        ident["OperatorsName"].split("^")[0],
    ]
    return [v.encode() for v in values]


def assert_anonymous(data: bytes, person: DemoPatient) -> None:
    left = [v for v in identifying(person) if v in data]
    assert left == []


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> DemoManifest:
    return write_demo_tree(tmp_path_factory.mktemp("demo") / "tree", patients=1, seed=3)


@pytest.fixture(scope="module")
def person(tree: DemoManifest) -> DemoPatient:
    return tree.patients[0]


@pytest.fixture(scope="module")
def files(tree: DemoManifest, person: DemoPatient) -> Callable[[str], bytes]:
    base = tree.root / person.folder / person.label

    def read(relative: str) -> bytes:
        return (base / relative).read_bytes()

    return read


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGBA"))


# --- Choice by name -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("photo_1.jpg", scrub_jpeg),
        ("IMG.JPEG", scrub_jpeg),
        ("scan.Png", scrub_png),
        ("ios/upper.STL", scrub_stl),
        ("volume.nii", scrub_nifti),
        ("cbct/volume.NII.GZ", scrub_nifti_gz),
        ("0001.dcm", None),
        ("notes.txt", None),
        ("archive.gz", None),
        ("jpg", None),
    ],
)
def test_scrubber_is_chosen_by_extension(name: str, expected: Scrubber | None) -> None:
    assert scrubber_for(name) is expected


# --- JPEG -----------------------------------------------------------------------------------


def scan_data(jpeg: bytes) -> bytes:
    """From the first SOS marker on (what the scrubber must copy unchanged)."""
    return jpeg[jpeg.index(b"\xff\xda") :]


@pytest.mark.parametrize("piece", PIECES)
def test_jpeg_loses_exif_gps_and_comment_but_not_pixels(
    files: Callable[[str], bytes], person: DemoPatient, piece: int
) -> None:
    data = files("intraoral-photo/photo_1.jpg")
    assert person.identity["PatientID"].encode() in data  # the demo file does carry it
    out, found = scrub(scrub_jpeg, data, piece)
    assert found == [Scrubbed("EXIF (APP1)", "removed"), Scrubbed("JPEG comment", "removed")]
    assert_anonymous(out, person)
    with Image.open(io.BytesIO(out)) as image:
        assert image.format == "JPEG"
        exif = image.getexif()
        assert exif.get_ifd(IFD.GPSInfo) == {}
        assert dict(exif) == {}
        assert "comment" not in image.info
    assert np.array_equal(pixels(out), pixels(data))
    assert data.endswith(scan_data(out))
    assert_idempotent(scrub_jpeg, out)


def segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def test_jpeg_keeps_colour_segments_and_drops_every_other_app_segment() -> None:
    plain = io.BytesIO()
    Image.new("RGB", (16, 8), (200, 90, 100)).save(plain, "JPEG", quality=90)
    base = plain.getvalue()
    icc = segment(0xE2, b"ICC_PROFILE\0\x01\x01" + b"fake profile bytes")
    adobe = segment(0xEE, b"Adobe\0\x64\x00\x00\x00\x00\x01")
    extras = [
        segment(0xE1, b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta>DOE JOHN</x:xmpmeta>"),
        segment(0xE2, b"MPF\0II*\0 DOE JOHN"),
        segment(0xE3, b"DOE JOHN"),
        segment(0xED, b"Photoshop 3.0\08BIM\x04\x04 DOE JOHN"),
        segment(0xEF, b"DOE JOHN"),
        b"\xff\xff\xff",  # fill bytes before the next marker
        segment(0xFE, b"DOE JOHN"),
    ]
    data = base[:2] + icc + adobe + b"".join(extras) + base[2:]
    out, found = scrub(scrub_jpeg, data, 7)
    assert b"DOE JOHN" not in out
    assert out == base[:2] + icc + adobe + base[2:]
    assert [f.field for f in found] == [
        "XMP (APP1)",
        "APP2 (not an ICC profile)",
        "APP3",
        "IPTC/Photoshop (APP13)",
        "APP15",
        "JPEG comment",
    ]
    assert {f.action for f in found} == {"removed"}
    assert np.array_equal(pixels(out), pixels(base))
    assert_idempotent(scrub_jpeg, out)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: d[:30], r"truncated segment 0xFF.. at byte \d+"),
        (lambda d: d[:2], r"the file ends before the image data \(no SOS marker\)"),
        (lambda d: b"GIF89a" + d, r"no SOI marker at the start"),
        (lambda d: d[:20] + b"\x00" + d[20:], r"expected a marker at byte 20, found 0x00"),
        (lambda d: b"", r"no SOI marker"),
    ],
)
def test_unreadable_jpeg_is_refused(
    files: Callable[[str], bytes], damage: Callable[[bytes], bytes], message: str
) -> None:
    data = damage(files("intraoral-photo/photo_1.jpg"))
    with pytest.raises(SourceFileError, match=r"^JPEG structure cannot be read \(" + message):
        scrub(scrub_jpeg, data, 7)
    with pytest.raises(SourceFileError, match=r"; the file was not exported$"):
        scrub(scrub_jpeg, data)


# --- PNG ------------------------------------------------------------------------------------


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, body) of every chunk, in order."""
    chunks, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        chunks.append((kind, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
        if kind == b"IEND":
            break
    return chunks


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@pytest.fixture(scope="module")
def tagged_png(person: DemoPatient) -> bytes:
    """A photo-like PNG with every kind of text chunk, EXIF with GPS, tIME and a trailer."""
    ident = person.identity
    rng = np.random.default_rng(5)
    image = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), "RGB")
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", ident["OperatorsName"])
    info.add_text("Comment", f"{ident['PatientName']} {ident['PatientID']}", zip=True)
    info.add_itxt("Description", f"{ident['AccessionNumber']} {ident['PatientName']}", "en")
    exif = Image.Exif()
    exif[0x010E] = ident["PatientName"].replace("^", " ")
    exif.get_ifd(IFD.Exif)[0xA431] = ident["CameraSerialNumber"]
    exif.get_ifd(IFD.GPSInfo)[0x0001] = "N"
    buf = io.BytesIO()
    image.save(buf, "PNG", pnginfo=info, exif=exif)
    data = buf.getvalue()
    end = data.rindex(b"IEND") - 4
    time_chunk = png_chunk(b"tIME", struct.pack(">HBBBBB", 2024, 3, 15, 9, 30, 0))
    return data[:end] + time_chunk + data[end:] + ident["PatientID"].encode()


@pytest.mark.parametrize("piece", PIECES)
def test_png_loses_text_exif_and_time_but_not_pixels(
    tagged_png: bytes, person: DemoPatient, piece: int
) -> None:
    out, found = scrub(scrub_png, tagged_png, piece)
    assert_anonymous(out, person)
    assert {f.field for f in found} == {
        "PNG tEXt",
        "PNG zTXt",
        "PNG iTXt",
        "PNG eXIf",
        "PNG tIME",
        "PNG data after IEND",
    }
    assert {f.action for f in found} == {"removed"}
    kinds = [kind for kind, _ in png_chunks(out)]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
    assert not {b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"tIME"} & set(kinds)
    idat = [body for kind, body in png_chunks(tagged_png) if kind == b"IDAT"]
    assert [body for kind, body in png_chunks(out) if kind == b"IDAT"] == idat
    with Image.open(io.BytesIO(out)) as image:
        assert image.format == "PNG"
        assert image.getexif().get_ifd(IFD.GPSInfo) == {}
        assert not image.text
    assert np.array_equal(pixels(out), pixels(tagged_png))
    assert_idempotent(scrub_png, out)


def test_png_streams_a_large_idat_in_chunks() -> None:
    body = bytes(range(256)) * (3 * CHUNK // 256)  # a 3 MiB chunk: must not be held whole
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")
    reader = PieceReader(data, CHUNK)
    pieces = list(scrub_png(reader, []))
    assert b"".join(pieces) == data
    assert max(len(p) for p in pieces) <= CHUNK
    assert reader.largest <= CHUNK


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: b"GIF89a" + d, r"no PNG signature at the start"),
        (lambda d: d[:20], r"truncated IHDR chunk at byte 16"),
        (lambda d: d[:36], r"truncated chunk header at byte 33"),
        (lambda d: d[: d.rindex(b"IEND") - 4], r"the file ends before the IEND chunk"),
        (lambda d: d[:12] + b"IH\x00R" + d[16:], r"invalid chunk at byte 8"),
    ],
)
def test_unreadable_png_is_refused(
    tagged_png: bytes, damage: Callable[[bytes], bytes], message: str
) -> None:
    with pytest.raises(SourceFileError, match=r"^PNG structure cannot be read \(" + message):
        scrub(scrub_png, damage(tagged_png), 7)


# --- STL ------------------------------------------------------------------------------------


@pytest.mark.parametrize("piece", PIECES)
def test_binary_stl_header_is_blanked_and_triangles_kept(
    files: Callable[[str], bytes], person: DemoPatient, piece: int
) -> None:
    data = files("ios/upper.stl")
    out, found = scrub(scrub_stl, data, piece)
    assert found == [Scrubbed("STL header", "blanked")]
    assert out[:80] == BLANK_STL_HEADER and not out.startswith(b"solid")
    assert out[80:] == data[80:]  # triangle count and every triangle, byte for byte
    assert_anonymous(out, person)
    assert_idempotent(scrub_stl, out)


def test_binary_stl_whose_header_starts_with_solid_is_still_binary() -> None:
    # Some CAD exporters write "solid <name>" into binary headers.
    triangles = b"".join(np.arange(12, dtype="<f4").tobytes() + b"\0\0" for _ in range(30))
    data = b"solid DOE JOHN facet".ljust(80, b" ") + struct.pack("<I", 30) + triangles
    out, found = scrub(scrub_stl, data, 7)
    assert out == BLANK_STL_HEADER + data[80:]
    assert found == [Scrubbed("STL header", "blanked")]


ASCII_FACET = (
    b"  facet normal 0 0 1\n    outer loop\n      vertex 0 0 0\n      vertex 1 0 0\n"
    b"      vertex 0 1 0\n    endloop\n  endfacet\n"
)


@pytest.mark.parametrize("piece", PIECES)
@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_ascii_stl_solid_names_are_removed(piece: int, newline: bytes) -> None:
    facets = ASCII_FACET * 3
    data = (
        b"solid John Doe 12345\n" + facets + b"endsolid John Doe 12345\n"
        b"  SOLID\tDoe upper jaw\n" + facets + b"endsolid Doe upper jaw\n"
        b"solid\nendsolid   \n"
    ).replace(b"\n", newline)
    expected = (
        b"solid\n" + facets + b"endsolid\n  SOLID\n" + facets + b"endsolid\nsolid\nendsolid   \n"
    ).replace(b"\n", newline)
    out, found = scrub(scrub_stl, data, piece)
    assert out == expected
    assert b"Doe" not in out
    assert found == [Scrubbed("STL solid name", "blanked")]
    assert_idempotent(scrub_stl, out)


def test_ascii_stl_without_names_is_unchanged_and_not_reported() -> None:
    data = b"solid\n" + ASCII_FACET + b"endsolid"  # and no final newline
    assert scrub(scrub_stl, data, 7) == (data, [])


def test_unreadable_stl_is_refused() -> None:
    with pytest.raises(
        SourceFileError,
        match=r"^STL structure cannot be read \(40 bytes is too short for a binary STL\); "
        r"the file was not exported$",
    ):
        scrub(scrub_stl, b"\x01" * 40)
    one_line = b"solid " + b"x" * (CHUNK + 10)
    with pytest.raises(SourceFileError, match=r"a line longer than \d+ bytes"):
        scrub(scrub_stl, one_line)


def ascii_stl_pieces(facets: int) -> Iterator[bytes]:
    yield b"solid DOE JOHN 12345\n"
    batch = ASCII_FACET * 1000
    for _ in range(facets // 1000):
        yield batch
    yield b"endsolid DOE JOHN 12345\n"


def test_large_ascii_stl_is_scrubbed_chunk_by_chunk() -> None:
    reader = StreamReader(ascii_stl_pieces(100_000))  # ~13 MB of text
    found: list[Scrubbed] = []
    size = largest = 0
    tail = b""
    for piece in scrub_stl(reader, found):
        size += len(piece)
        largest = max(largest, len(piece))
        assert b"DOE" not in piece
        tail = (tail + piece)[-64:]
    assert size == 6 + 100_000 * len(ASCII_FACET) + 9
    assert tail.endswith(b"endloop\n  endfacet\nendsolid\n")
    assert largest <= MAX_YIELD
    assert reader.largest <= CHUNK
    assert found == [Scrubbed("STL solid name", "blanked")]


# --- NIfTI ----------------------------------------------------------------------------------


def nifti1_fields(raw: bytes) -> dict[str, bytes]:
    return {
        "data_type": raw[4:14],
        "db_name": raw[14:32],
        "descrip": raw[148:228],
        "aux_file": raw[228:252],
    }


@pytest.fixture(scope="module")
def demo_nii(files: Callable[[str], bytes]) -> bytes:
    """The demo volume uncompressed: a NIfTI-1 single file with voxels from byte 352."""
    return gzip.decompress(files("cbct/processed/volume.nii.gz"))


NIFTI_FOUND = [
    Scrubbed("NIfTI db_name", "blanked"),
    Scrubbed("NIfTI descrip", "blanked"),
    Scrubbed("NIfTI aux_file", "blanked"),
]


@pytest.mark.parametrize("piece", PIECES)
def test_nifti_gz_text_fields_are_blanked_and_voxels_kept(
    files: Callable[[str], bytes], demo_nii: bytes, person: DemoPatient, piece: int
) -> None:
    data = files("cbct/processed/volume.nii.gz")
    assert person.identity["AccessionNumber"].encode() in demo_nii
    out, found = scrub(scrub_nifti_gz, data, piece)
    assert found == NIFTI_FOUND
    # One gzip member: no file name (FLG 0), mtime 0; it decompresses to the same voxels.
    assert out[:3] == b"\x1f\x8b\x08" and out[3] == 0 and out[4:8] == bytes(4)
    raw = gzip.decompress(out)
    assert_anonymous(raw, person)
    assert struct.unpack_from("<i", raw)[0] == 348 and raw[344:348] == b"n+1\0"
    assert set(nifti1_fields(raw).values()) <= {bytes(10), bytes(18), bytes(80), bytes(24)}
    assert raw[252:344] == demo_nii[252:344]  # the geometry after the text fields is intact
    assert raw[32:148] == demo_nii[32:148]
    assert raw[348:] == demo_nii[348:]  # extension flag and every voxel
    assert_idempotent(scrub_nifti_gz, out)


@pytest.mark.parametrize("piece", PIECES)
def test_nii_text_fields_are_blanked_in_place(
    demo_nii: bytes, person: DemoPatient, piece: int
) -> None:
    out, found = scrub(scrub_nifti, demo_nii, piece)
    assert found == NIFTI_FOUND
    assert len(out) == len(demo_nii)
    assert_anonymous(out, person)
    assert out[348:] == demo_nii[348:]
    assert_idempotent(scrub_nifti, out)


def with_extension(nii: bytes, content: bytes) -> bytes:
    """``nii`` with one extension (ecode 2: DICOM) holding ``content``; voxels move after it."""
    esize = 8 + -(-len(content) // 16) * 16
    extension = struct.pack("<ii", esize, 2) + content.ljust(esize - 8, b"\0")
    header = bytearray(nii[:348])
    struct.pack_into("<f", header, 108, 352.0 + esize)
    return bytes(header) + b"\x01\0\0\0" + extension + nii[352:]


@pytest.mark.parametrize("piece", PIECES)
def test_nifti_extensions_are_zeroed_without_moving_voxels(
    demo_nii: bytes, person: DemoPatient, piece: int
) -> None:
    ident = person.identity
    data = with_extension(demo_nii, f"(0010,0010) PN {ident['PatientName']}".encode())
    out, found = scrub(scrub_nifti, data, piece)
    assert found == [*NIFTI_FOUND, Scrubbed("NIfTI extension", "blanked")]
    assert len(out) == len(data)
    assert_anonymous(out, person)
    vox = int(struct.unpack_from("<f", out, 108)[0])
    assert out[348:vox] == bytes(vox - 348)  # flag cleared, extension zeroed
    assert out[vox:] == demo_nii[352:]
    assert_idempotent(scrub_nifti, out)
    gz, gz_found = scrub(scrub_nifti_gz, gzip.compress(data), piece)
    assert gzip.decompress(gz) == out and gz_found == found


def test_big_endian_nifti1_and_nifti2_are_scrubbed() -> None:
    header1 = bytearray(348)
    struct.pack_into(">i", header1, 0, 348)
    header1[148:156] = b"DOE JOHN"
    struct.pack_into(">f", header1, 108, 352.0)
    header1[344:348] = b"n+1\0"
    voxels = bytes(range(256)) * 4
    out, found = scrub(scrub_nifti, bytes(header1) + bytes(4) + voxels, 7)
    assert out == bytes(header1[:148]) + bytes(80) + bytes(header1[228:]) + bytes(4) + voxels
    assert found == [Scrubbed("NIfTI descrip", "blanked")]

    header2 = bytearray(540)
    struct.pack_into("<i8s", header2, 0, 540, b"n+2\0\r\n\x1a\n")
    struct.pack_into("<q", header2, 168, 544 + 32)
    header2[240:248] = b"DOE JOHN"
    header2[320:326] = b"ACC-77"
    extension = struct.pack("<ii", 32, 4) + b"DOE JOHN".ljust(24, b"\0")
    data = bytes(header2) + b"\x01\0\0\0" + extension + voxels
    out, found = scrub(scrub_nifti, data, 7)
    assert b"DOE" not in out and b"ACC-77" not in out
    assert out[:240] == header2[:240] and out[344:540] == header2[344:540]
    assert out[540:576] == bytes(36) and out[576:] == voxels
    assert found == [
        Scrubbed("NIfTI descrip", "blanked"),
        Scrubbed("NIfTI aux_file", "blanked"),
        Scrubbed("NIfTI extension", "blanked"),
    ]
    assert_idempotent(scrub_nifti, out)


def test_header_only_nifti_has_everything_after_the_header_zeroed() -> None:
    # "ni1": the voxels live in a separate .img; extensions run to the end of the file.
    header = bytearray(348)
    struct.pack_into("<i", header, 0, 348)
    header[344:348] = b"ni1\0"
    data = bytes(header) + b"\x01\0\0\0" + struct.pack("<ii", 24, 4) + b"DOE JOHN".ljust(16)
    out, found = scrub(scrub_nifti, data, 7)
    assert out == bytes(header) + bytes(len(data) - 348)
    assert found == [Scrubbed("NIfTI extension", "blanked")]


def test_multi_member_nifti_gz_becomes_one_member(demo_nii: bytes) -> None:
    data = gzip.compress(demo_nii[:200]) + gzip.compress(demo_nii[200:]) + b"\0" * 8
    out, found = scrub(scrub_nifti_gz, data, 7)
    assert found == NIFTI_FOUND
    unzip = zlib.decompressobj(31)
    raw = unzip.decompress(out)
    assert unzip.eof and unzip.unused_data == b""
    assert raw[348:] == demo_nii[348:]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (gzip.compress(b"hello world " * 100), r"not a NIfTI-1/2 file \(sizeof_hdr is neither"),
        (gzip.compress(b""), r"not a NIfTI-1/2 file"),
        (gzip.compress(struct.pack("<i", 348) + bytes(344)), r"not a NIfTI-1/2 file \(magic"),
        (b"plain text, not gzip", r"gzip data cannot be read \(.*incorrect header check"),
    ],
)
def test_nifti_gz_that_is_not_nifti_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(SourceFileError, match=message + r".*; the file was not exported$"):
        scrub(scrub_nifti_gz, data, 7)


def test_truncated_nifti_is_refused(files: Callable[[str], bytes], demo_nii: bytes) -> None:
    with pytest.raises(SourceFileError, match=r"truncated NIfTI header at byte 0"):
        scrub(scrub_nifti, demo_nii[:200])
    data = files("cbct/processed/volume.nii.gz")
    with pytest.raises(SourceFileError, match=r"^gzip data cannot be read \(.*end early\)"):
        scrub(scrub_nifti_gz, data[: len(data) // 2])


def zeros_nii_gz(header: bytes, voxels: int) -> Iterator[bytes]:
    """A .nii.gz of ``voxels`` zero bytes, compressed as it is generated."""
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)
    yield packer.compress(header)
    block = bytes(CHUNK)
    for _ in range(voxels // CHUNK):
        yield packer.compress(block)
    yield packer.flush()


def inflate(unzip: zlib._Decompress, data: bytes) -> Iterator[bytes]:
    """What ``data`` decompresses to, a chunk at a time (zeros compress a thousandfold)."""
    while data:
        yield unzip.decompress(data, CHUNK)
        data = unzip.unconsumed_tail
    while not unzip.eof and (more := unzip.decompress(b"", CHUNK)):
        yield more


def test_large_nifti_gz_is_scrubbed_in_bounded_memory(demo_nii: bytes) -> None:
    voxels = 50 * CHUNK
    reader = StreamReader(zeros_nii_gz(demo_nii[:352], voxels))
    unzip = zlib.decompressobj(31)
    found: list[Scrubbed] = []
    largest = size = 0
    head, dirty = b"", False
    tracemalloc.start()
    try:
        for piece in scrub_nifti_gz(reader, found):
            largest = max(largest, len(piece))
            for raw in inflate(unzip, piece):
                split = max(0, 352 - size)
                head, tail = head + raw[:split], raw[split:]
                dirty = dirty or tail.count(0) != len(tail)
                size += len(raw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert unzip.eof and size == 352 + voxels and not dirty  # every voxel still there, still 0
    assert set(nifti1_fields(head).values()) <= {bytes(10), bytes(18), bytes(80), bytes(24)}
    assert found == NIFTI_FOUND
    assert largest <= MAX_YIELD
    assert reader.largest <= CHUNK
    assert peak < 16 * CHUNK  # a few chunks in flight, never the 50 MiB volume


def test_demo_tree_files_all_have_a_scrubber(tree: DemoManifest) -> None:
    names = {p.name for p in Path(tree.root).rglob("*") if p.is_file()}
    covered = {n for n in names if scrubber_for(n) is not None}
    assert covered == names - {n for n in names if n.endswith(".dcm")}
