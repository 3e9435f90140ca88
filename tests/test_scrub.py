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

from exporter.deid.scrub import (
    BLANK_STL_HEADER,
    CHUNK,
    Scrubbed,
    Scrubber,
    scrub_jpeg,
    scrub_nifti,
    scrub_nifti_gz,
    scrub_obj,
    scrub_ply,
    scrub_png,
    scrub_stl,
    scrubber_for,
)
from exporter.dev.demo_data import DemoManifest, DemoPatient, write_demo_tree
from exporter.errors import SourceFileError

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
        ("ios/lower.ply", scrub_ply),
        ("IOS/UPPER.PLY", scrub_ply),
        ("ios/lower.obj", scrub_obj),
        ("ios/upper.Obj", scrub_obj),
        ("upper.mtl", None),
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


def test_jpeg_keeps_the_colour_transform_and_drops_every_other_app_segment() -> None:
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
    assert out == base[:2] + adobe + base[2:], "an ICC profile's descriptions are text: it goes"
    assert [f.field for f in found] == [
        "ICC colour profile (APP2)",
        "XMP (APP1)",
        "APP2",
        "APP3",
        "IPTC/Photoshop (APP13)",
        "APP15",
        "JPEG comment",
    ]
    assert {f.action for f in found} == {"removed"}
    assert np.array_equal(pixels(out), pixels(base))
    assert_idempotent(scrub_jpeg, out)


def jpeg_markers(data: bytes) -> list[tuple[int, int]]:
    """(offset, code) of each marker up to EOI, skipping segment bodies and scan data."""
    markers, pos = [(0, 0xD8)], 2
    while True:
        assert data[pos] == 0xFF
        code = data[pos + 1]
        markers.append((pos, code))
        if code == 0xD9:
            return markers
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if code == 0xDA:  # scan data: 0xFF only stuffed (0xFF00) or as RSTn until a marker
            pos = data.index(b"\xff", pos)
            while data[pos + 1] == 0 or 0xD0 <= data[pos + 1] <= 0xD7:
                pos = data.index(b"\xff", pos + 1)


@pytest.fixture(scope="module")
def progressive() -> bytes:
    rng = np.random.default_rng(7)
    image = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), "RGB")
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=95, progressive=True)
    return buf.getvalue()


@pytest.mark.parametrize("piece", PIECES)
def test_progressive_jpeg_loses_segments_between_its_scans(progressive: bytes, piece: int) -> None:
    markers = jpeg_markers(progressive)
    scans = [at for at, code in markers if code == 0xDA]
    assert len(scans) > 2  # progressive: the image is built over several scans
    after_first = next(at for at, code in markers if at > scans[0])  # tables of the next scan
    extras = segment(
        0xE1, b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta>DOE JOHN</x:xmpmeta>"
    ) + segment(0xFE, b"DOE JOHN")
    last = scans[-1]
    data = (
        progressive[:after_first]
        + extras
        + progressive[after_first:last]
        + segment(0xEC, b"Ducky DOE JOHN")
        + progressive[last:]
    )
    assert np.array_equal(pixels(data), pixels(progressive))  # where a decoder allows them
    out, found = scrub(scrub_jpeg, data, piece)
    assert out == progressive
    assert found == [
        Scrubbed("XMP (APP1)", "removed"),
        Scrubbed("JPEG comment", "removed"),
        Scrubbed("APP12", "removed"),
    ]
    assert np.array_equal(pixels(out), pixels(progressive))
    assert_idempotent(scrub_jpeg, out)


@pytest.mark.parametrize("piece", PIECES)
def test_jpeg_loses_a_trailer_after_eoi(progressive: bytes, piece: int) -> None:
    motion = b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom" + b"\0\0\0\x10udta DOE JOHN"
    out, found = scrub(scrub_jpeg, progressive + motion, piece)
    assert out == progressive
    assert found == [Scrubbed("data after the image (EOI)", "removed")]
    assert_idempotent(scrub_jpeg, out)


@pytest.mark.parametrize("piece", PIECES)
def test_jpeg_keeps_only_the_first_image_of_a_multi_picture_file(
    files: Callable[[str], bytes], person: DemoPatient, piece: int
) -> None:
    # MPF: the first image says where the others are (APP2 "MPF"); each is a whole JPEG with
    # its own EXIF and GPS, appended after the first EOI.
    photo = files("intraoral-photo/photo_1.jpg")
    mpf = segment(0xE2, b"MPF\0MM\0*\0\0\0\x08" + bytes(16))
    first = photo[:2] + mpf + photo[2:]
    alone, alone_found = scrub(scrub_jpeg, photo)
    out, found = scrub(scrub_jpeg, first + photo, piece)
    assert out == alone
    assert found == [
        Scrubbed("APP2", "removed"),
        *alone_found,
        Scrubbed("data after the image (EOI)", "removed"),
    ]
    assert out.count(b"\xff\xd8") == 1 and b"Exif" not in out
    assert_anonymous(out, person)
    with Image.open(io.BytesIO(out)) as image:
        assert image.getexif().get_ifd(IFD.GPSInfo) == {}
    assert np.array_equal(pixels(out), pixels(photo))
    assert_idempotent(scrub_jpeg, out)


def jpeg_scan(rng: np.random.Generator, size: int) -> bytes:
    """Scan-like data: random bytes with every 0xFF stuffed and a restart marker every 4 KiB."""
    raw = rng.integers(0, 256, size, dtype=np.uint8).tobytes().replace(b"\xff", b"\xff\x00")
    step = 4096
    return b"".join(
        raw[i : i + step] + bytes([0xFF, 0xD0 + (i // step) % 8]) for i in range(0, len(raw), step)
    )


@pytest.mark.parametrize(("piece", "size"), [(7, 20_000), (CHUNK, 3 * CHUNK)])
def test_jpeg_scans_stream_through_with_restarts_and_fill_bytes(piece: int, size: int) -> None:
    rng = np.random.default_rng(11)
    tables = segment(0xDB, bytes(65)) + segment(0xC2, bytes(15)) + segment(0xC4, bytes(20))
    sos = segment(0xDA, bytes(10))
    scan1, scan2 = jpeg_scan(rng, size), jpeg_scan(rng, 1000)
    # Fill bytes before a marker stay with the scan data before them; the segments go.
    between = b"\xff\xff" + segment(0xFE, b"DOE JOHN") + b"\xff\xff\xff" + segment(0xE5, b"x")
    head = b"\xff\xd8" + tables + sos
    data = head + scan1 + between + segment(0xC4, bytes(20)) + sos + scan2 + b"\xff\xd9"
    expected = head + scan1 + b"\xff\xff" + segment(0xC4, bytes(20)) + sos + scan2 + b"\xff\xd9"
    reader = PieceReader(data, piece)
    found: list[Scrubbed] = []
    pieces = list(scrub_jpeg(reader, found))
    assert b"".join(pieces) == expected
    assert found == [Scrubbed("JPEG comment", "removed"), Scrubbed("APP5", "removed")]
    assert max(len(p) for p in pieces) <= MAX_YIELD
    assert reader.largest <= CHUNK


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: d[:30], r"truncated segment 0xFF.. at byte \d+"),
        (lambda d: d[:2], r"the file ends before the image data \(no SOS marker\)"),
        (lambda d: b"GIF89a" + d, r"no SOI marker at the start"),
        (lambda d: d[:20] + b"\x00" + d[20:], r"expected a marker at byte 20, found 0x00"),
        (lambda d: b"", r"no SOI marker"),
        (lambda d: d[:-2], r"the file ends before the end of the image \(no EOI marker\)"),
        (lambda d: d[:-2] + b"\xff\xd8", r"unexpected marker 0xFFD8 at byte \d+ between the scans"),
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


# --- PLY ------------------------------------------------------------------------------------

PLY_HEADER = (
    b"ply\nformat {format} 1.0\ncomment Doe^John\nobj_info scanner SN 12345\n"
    b"element vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
    b"comment  second comment\nelement face 1\nproperty list uchar int vertex_indices\n"
    b"obj_info\tscanned 2024-03-15\nend_header\n"
)
PLY_CLEAN = (
    b"ply\nformat {format} 1.0\n"
    b"element vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
    b"element face 1\nproperty list uchar int vertex_indices\nend_header\n"
)
PLY_FOUND = [Scrubbed("PLY comment", "removed"), Scrubbed("PLY obj_info", "removed")]


@pytest.mark.parametrize("piece", PIECES)
@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_ascii_ply_loses_comments_and_obj_info(piece: int, newline: bytes) -> None:
    body = b"0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n".replace(b"\n", newline)
    header = PLY_HEADER.replace(b"{format}", b"ascii").replace(b"\n", newline)
    clean = PLY_CLEAN.replace(b"{format}", b"ascii").replace(b"\n", newline)
    out, found = scrub(scrub_ply, header + body, piece)
    assert out == clean + body
    assert found == PLY_FOUND
    assert_idempotent(scrub_ply, out)


@pytest.mark.parametrize("piece", PIECES)
def test_binary_ply_loses_comments_and_keeps_its_body(piece: int) -> None:
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype="<f4").tobytes()
    # Body bytes that look like header text must stay: only the header is read as lines.
    body = vertices + struct.pack("<B3i", 3, 0, 1, 2) + b"\ncomment DOE\nend_header\n" * 50
    header = PLY_HEADER.replace(b"{format}", b"binary_little_endian")
    out, found = scrub(scrub_ply, header + body, piece)
    clean = PLY_CLEAN.replace(b"{format}", b"binary_little_endian")
    assert out == clean + body
    assert out[len(clean) :] == body
    assert b"Doe^John" not in out and b"12345" not in out
    assert found == PLY_FOUND
    assert_idempotent(scrub_ply, out)


def test_ply_without_metadata_is_unchanged_and_not_reported() -> None:
    data = PLY_CLEAN.replace(b"{format}", b"binary_big_endian") + bytes(range(256)) * 5000
    assert scrub(scrub_ply, data, 7) == (data, [])
    empty = b"ply\nformat ascii 1.0\nelement vertex 0\nend_header"  # no newline at the end
    assert scrub(scrub_ply, empty, 7) == (empty, [])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", r'no "ply" line at the start'),
        (b"solid x\nendsolid x\n", r'no "ply" line at the start'),
        (b"plyx\nformat ascii 1.0\nend_header\n", r'no "ply" line at the start'),
        (
            b"ply\nformat ascii 1.0\nelement vertex 0\n",
            r"no end_header line in the first \d+ bytes",
        ),
        (
            b"ply\nformat ascii 1.0\n" + b"comment Doe^John\n" * 70_000 + b"end_header\n",
            r"no end_header line in the first 1048576 bytes",
        ),
    ],
)
def test_unreadable_ply_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(
        SourceFileError,
        match=r"^PLY structure cannot be read \(" + message + r"\); the file was not exported$",
    ):
        scrub(scrub_ply, data, 7)


# --- OBJ ------------------------------------------------------------------------------------

OBJ_GEOMETRY = (
    b"v 1.000000 2.000000 3.000000\nv -1.5 0.25 9e-3\nv 0 1 0\n"
    b"vn 0.0 0.0 1.0\nvt 0.5 0.5\nf 1//1 2//1 3//1\nf 1/1/1 2/1/1 3/1/1\n"
)
OBJ_FOUND = [
    Scrubbed("OBJ comment", "removed"),
    Scrubbed("OBJ material library", "removed"),
    Scrubbed("OBJ object/group name", "blanked"),
    Scrubbed("OBJ material name", "removed"),
]


def obj_file(newline: bytes) -> tuple[bytes, bytes]:
    """(an OBJ with a patient's name in comments, names and a library; what must be left)."""
    data = (
        b"# Exported by IntraScan 3.2 for Doe^John, 12345\n"
        b"mtllib Doe_John.mtl\n"
        b"o Patient_Doe\n" + OBJ_GEOMETRY + b"  # indented comment: John Doe\n"
        b"\tg jaw_John upper\n"
        b"usemtl gum\n" + OBJ_GEOMETRY + b"#\n"
        b"g\no   \ns 1\n\n" + OBJ_GEOMETRY + b"  mtllib\tDoe.mtl other.mtl\n"
        b"f 1 2 3 # a comment after a value goes too: Doe"
    )
    expected = (
        b"o\n" + OBJ_GEOMETRY + b"g\n" + OBJ_GEOMETRY + b"g\no\ns 1\n\n" + OBJ_GEOMETRY + b"f 1 2 3"
    )
    return data.replace(b"\n", newline), expected.replace(b"\n", newline)


def geometry(data: bytes) -> list[bytes]:
    """The geometry lines, without a comment after the values."""
    lines = (line.partition(b"#")[0].rstrip() for line in data.splitlines())
    return [line for line in lines if line.split()[:1] in ([b"v"], [b"vn"], [b"f"])]


@pytest.mark.parametrize("piece", PIECES)
@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_obj_loses_comments_names_and_material_libraries(piece: int, newline: bytes) -> None:
    data, expected = obj_file(newline)
    out, found = scrub(scrub_obj, data, piece)
    assert out == expected
    assert geometry(out) == geometry(data) and len(geometry(out)) == 19
    assert b"Doe" not in out and b"John" not in out and b"12345" not in out
    assert found == OBJ_FOUND
    assert_idempotent(scrub_obj, out)


def test_obj_without_metadata_is_unchanged_and_not_reported() -> None:
    data = OBJ_GEOMETRY * 3 + b"g\nl 1 2\ns off\n"
    assert scrub(scrub_obj, data, 7) == (data, [])


def test_obj_keeps_only_geometry_statements() -> None:
    data = b"v 0 0 0\ncstype bezier\nusemtl Doe_John\nmaplib x.map\nvt 0.5 0.5\n"
    out, found = scrub(scrub_obj, data, 5)
    assert out == b"v 0 0 0\nvt 0.5 0.5\n"
    assert found == [
        Scrubbed("OBJ other statement", "removed"),
        Scrubbed("OBJ material name", "removed"),
    ]


def obj_pieces(blocks: int) -> Iterator[bytes]:
    yield b"# DOE JOHN\no DOE_JOHN\n"
    batch = OBJ_GEOMETRY * 2000
    for n in range(blocks):
        yield batch + b"g DOE_JOHN_%d\n" % n if n % 10 == 0 else batch
    yield b"# end of DOE JOHN"


def test_large_obj_is_scrubbed_chunk_by_chunk() -> None:
    reader = StreamReader(obj_pieces(100))  # ~20 MB of text
    found: list[Scrubbed] = []
    size = largest = 0
    for piece in scrub_obj(reader, found):
        size += len(piece)
        largest = max(largest, len(piece))
        assert b"DOE" not in piece
    assert size == 2 + 100 * 2000 * len(OBJ_GEOMETRY) + 10 * 2
    assert largest <= MAX_YIELD
    assert reader.largest <= CHUNK
    assert found == [
        Scrubbed("OBJ comment", "removed"),
        Scrubbed("OBJ object/group name", "blanked"),
    ]


def test_unreadable_obj_is_refused() -> None:
    with pytest.raises(
        SourceFileError,
        match=r"^OBJ structure cannot be read \(a line longer than \d+ bytes before byte \d+\); "
        r"the file was not exported$",
    ):
        scrub(scrub_obj, b"v 0 0 0\n# " + b"x" * (CHUNK + 10))
    with pytest.raises(
        SourceFileError, match=r"\(not a text file \(a NUL byte before byte \d+\)\)"
    ):
        scrub(scrub_obj, b"L\x01\x02\x00\x00\x00" + bytes(200), 7)  # e.g. a COFF object file


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
    again, found = scrub(scrub_nifti_gz, out, 7)  # (ISA-L's bytes follow the pieces fed in)
    assert gzip.decompress(again) == raw and found == []


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
        (b"plain text, not gzip", r"gzip data cannot be read \(.*(header|wrapper)"),
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
    header = bytearray(demo_nii[:352])  # 50 MiB of 8-bit voxels, as the header says
    struct.pack_into("<8h", header, 40, 3, 1024, 1024, 50, 1, 1, 1, 1)
    struct.pack_into("<hh", header, 70, 2, 8)
    reader = StreamReader(zeros_nii_gz(bytes(header), voxels))
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


def test_nifti_intent_name_is_blanked_too(demo_nii: bytes) -> None:
    named = bytearray(demo_nii)
    named[328:344] = b"DOE JOHN".ljust(16, b"\0")
    out, found = scrub(scrub_nifti, bytes(named), 1 << 20)
    assert Scrubbed("NIfTI intent_name", "blanked") in found
    assert out[328:344] == bytes(16) and b"DOE JOHN" not in out
    assert out[348:] == demo_nii[348:]


def test_nothing_follows_the_image_data_of_an_stl_or_nifti() -> None:
    """Bytes after the declared triangles or voxels are not part of the image: they go."""
    triangles = struct.pack("<I", 1) + bytes(50)
    out, found = scrub(scrub_stl, bytes(80) + triangles + b"Doe^John 12345", 7)
    assert out == BLANK_STL_HEADER + triangles
    assert Scrubbed("STL data after the triangles", "removed") in found
    with pytest.raises(SourceFileError, match="declares no triangles"):
        scrub(scrub_stl, bytes(80) + struct.pack("<I", 0) + bytes(50))
    header = bytearray(348)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, 3, 2, 2, 2, 1, 1, 1, 1)
    struct.pack_into("<hh", header, 70, 2, 8)
    struct.pack_into("<f", header, 108, 352)
    header[344:348] = b"n+1\0"
    volume = bytes(header) + bytes(4) + bytes(range(8))
    out, found = scrub(scrub_nifti, volume + b"Doe^John", 3)
    assert out == volume and found == [Scrubbed("NIfTI data after the voxels", "removed")]
    ascii_stl = b"solid x\nfacet normal 0 0 1\n Doe^John 12345\nendfacet\nendsolid\n"
    out, found = scrub(scrub_stl, ascii_stl, 4)
    assert out == b"solid\nfacet normal 0 0 1\nendfacet\nendsolid\n"
    assert Scrubbed("STL line outside the STL grammar", "removed") in found
