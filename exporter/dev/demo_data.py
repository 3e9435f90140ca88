"""Synthetic imaging tree for demos, tests and benchmarks: files only, no database or UI.

``write_demo_tree`` writes, per fictitious patient, a CBCT DICOM series, a processed NIfTI
volume, two intraoral scans (binary STL) and a few intraoral photos (JPEG with EXIF), under
``<site>/<study>/<cohort>/<patient>/<modality>/``. Every file carries identifying values on
purpose (DICOM headers, a private tag, a sequence item, the NIfTI ``descrip``, the STL header,
EXIF and a JPEG comment) so that de-identification can be tested against the manifest. The same
seed and arguments give byte-identical files.
"""

from __future__ import annotations

import csv
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from PIL.ExifTags import IFD
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


@dataclass(frozen=True)
class DemoScale:
    """How big each patient's files are."""

    slices: int
    matrix: int
    stl_triangles: int
    photo_size: tuple[int, int]
    photos: int

    def __post_init__(self) -> None:
        # The arch mesh is a grid of quads, two triangles each.
        if self.stl_triangles < 2 or self.stl_triangles % 2:
            raise ValueError("stl_triangles must be an even number of at least 2")


SCALES: dict[str, DemoScale] = {
    "small": DemoScale(12, 128, 2_048, (320, 240), 2),  # ~0.7 MB per patient
    "medium": DemoScale(48, 256, 20_000, (800, 600), 3),  # ~9 MB per patient
    "large": DemoScale(160, 512, 200_000, (1600, 1200), 4),  # ~108 MB per patient
}


@dataclass(frozen=True)
class DemoPatient:
    """One fictitious patient: where it lives in the tree and what identifies it."""

    label: str
    folder: str
    tags: tuple[str, ...]
    identity: dict[str, str]


@dataclass(frozen=True)
class DemoManifest:
    """What ``write_demo_tree`` wrote."""

    root: Path
    patients: tuple[DemoPatient, ...]
    files: int
    bytes: int


# --- Vocabulary ---------------------------------------------------------------------------------

SITES = {
    "site-a": {
        "InstitutionName": "Scheldeland University Hospital",
        "InstitutionAddress": "Oeverlaan 120, 9000 Gent, BE",
        "StationName": "CBCT-SCH-01",
        "DeviceSerialNumber": "PM3D-204518",
        "Manufacturer": "Planmeca",
        "ManufacturerModelName": "ProMax 3D Mid",
        "scanner": "3Shape TRIOS 5",
        "camera": "Canon|Canon EOS 90D",
        "CameraSerialNumber": "083021004417",
        "gps": "51.0412,3.7259",
    },
    "site-b": {
        "InstitutionName": "Kempen Dental Clinic",
        "InstitutionAddress": "Molenweg 7, 2440 Geel, BE",
        "StationName": "CS9600-KDC",
        "DeviceSerialNumber": "CS96-0031175",
        "Manufacturer": "Carestream Dental",
        "ManufacturerModelName": "CS 9600",
        "scanner": "Medit i700",
        "camera": "NIKON CORPORATION|NIKON D7500",
        "CameraSerialNumber": "3047712",
        "gps": "51.1634,4.9897",
    },
}
# Study folder -> (description, acquisition year, birth-year range, tag choices).
STUDIES: dict[str, tuple[str, int, tuple[int, int], tuple[tuple[str, ...], ...]]] = {
    "ortho-2024": (
        "Orthodontic CBCT",
        2024,
        (2006, 2014),
        (("baseline", "follow-up"), ("class-I", "class-II", "class-III")),
    ),
    "implant-2025": (
        "Implant planning CBCT",
        2025,
        (1948, 1985),
        (("baseline", "follow-up"), ("single-implant", "full-arch")),
    ),
}
OPTIONAL_TAGS = ("bone-graft", "cleft", "sleep-apnea")
COHORTS = ("cohort-1", "cohort-2")
FOLDERS = tuple(f"{s}/{t}/{c}" for s in SITES for t in STUDIES for c in COHORTS)

FAMILY_NAMES = (
    "VERMEULEN", "PEETERS", "JANSSENS", "MAES", "JACOBS", "WILLEMS", "CLAES", "GOOSSENS",
    "WOUTERS", "DE SMET", "MERTENS", "DUBOIS", "LAMBERT", "DUPONT", "MARTENS", "COOLS",
    "DE BACKER", "SMETS", "AERTS", "HERMANS", "BOGAERTS", "VAN DEN BROECK", "DE CLERCQ",
    "VERHAEGEN", "LEMMENS", "PAUWELS", "VERSTRAETEN", "COPPENS", "DE WOLF", "VAN HECKE",
)  # fmt: skip
GIVEN_NAMES = {
    "F": ("ANNA", "SOFIE", "LIES", "EMMA", "MARIE", "LOTTE", "ELINE", "NINA", "FLEUR", "JULIE",
          "HANNE", "LAURA", "INE", "SARA", "LEEN"),
    "M": ("PIETER", "JAN", "TOM", "BRAM", "LUCAS", "DAAN", "WOUTER", "KOEN", "STIJN", "SIMON",
          "THOMAS", "ARNE", "JONAS", "RUBEN", "MILAN"),
}  # fmt: skip
# Staff come from other names so a patient's name is never a substring of a physician's.
STAFF = (
    "VAN LOOY^KATRIEN", "SEGERS^GEERT", "BRUGGEMAN^HILDE", "DE RIDDER^DIRK",
    "VANDENBERGHE^AN", "CEULEMANS^BART",
)  # fmt: skip
STREETS = ("Kerkstraat", "Stationsstraat", "Dorpsstraat", "Molenstraat", "Schoolstraat")
TOWNS = ("9000 Gent", "2440 Geel", "2000 Antwerpen", "3000 Leuven", "8000 Brugge")

HU_OFFSET = 1024  # stored = HU + 1024, so air (-1000 HU) is 24 and outside the FOV is 0
FOV_MM = (160.0, 80.0)  # in-plane and axial field of view of the CBCT
# Each random stream gets its own key: SeedSequence([1]) and ([1, 0]) give the same numbers.
_IDENTITY, _TREE, _ANATOMY, _PIXELS = 1, 2, 3, 4
NOISE_GAIN = 28  # sd ~32 HU: a slice then deflates ~2x at zlib level 1, like clinical CBCT


# --- Public API ---------------------------------------------------------------------------------


def write_demo_tree(
    root: Path, patients: int = 12, seed: int = 1, scale: str = "small"
) -> DemoManifest:
    """Write a deterministic synthetic imaging tree under ``root`` and describe it.

    ``root`` must be missing or an empty directory. Patients are numbered ``P0001``.. and spread
    in blocks over 2 sites x 2 studies x 2 cohorts. The same arguments give byte-identical files
    (file times included). A patient's name and PatientID depend only on ``seed`` and its
    number; site, study and dates follow the folder, which depends on ``patients``.
    """
    root = Path(root)
    if patients < 1:
        raise ValueError(f"patients must be at least 1 (got {patients})")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer (got {seed})")
    if scale not in SCALES:
        raise ValueError(f"Unknown scale {scale!r}: use one of {', '.join(SCALES)}")
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} is a file: pick an empty directory for the demo tree")
    if root.is_dir() and any(root.iterdir()):
        raise ValueError(f"{root} is not empty: pick an empty directory for the demo tree")
    size = SCALES[scale]
    visits = [_patient(seed, i, patients) for i in range(patients)]
    files = total = 0
    for visit in visits:
        for path in _write_patient(root, visit, seed, size):
            files += 1
            total += path.stat().st_size
    return DemoManifest(root, tuple(v.person for v in visits), files, total)


def write_tags_csv(path: Path, manifest: DemoManifest) -> None:
    """Write the ``patient,tags`` CSV (tags joined with ``;``) that registration reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["patient", "tags"])
        for person in manifest.patients:
            writer.writerow([person.label, ";".join(person.tags)])


# --- Patients -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Visit:
    """A patient plus the non-identifying facts of their imaging visit."""

    person: DemoPatient
    index: int
    site: str
    sex: str
    taken: datetime
    description: str


def _patient(seed: int, index: int, count: int) -> _Visit:
    label = f"P{index + 1:04d}"
    folder = FOLDERS[index * len(FOLDERS) // count]  # contiguous blocks, like enrolment
    site, study = folder.split("/")[:2]
    description, year, births, tag_choices = STUDIES[study]
    rng = np.random.default_rng([seed, _IDENTITY, index])
    tags = [str(rng.choice(choices)) for choices in tag_choices]
    if rng.random() < 0.3:
        tags.append(str(rng.choice(OPTIONAL_TAGS)))

    # Names (up to 900 patients) and numbers come from seed-level bijections, so they are unique
    # within a tree and a patient keeps them whatever the patient count.
    tree = np.random.default_rng([seed, _TREE])
    combos = [(f, s, g) for f in FAMILY_NAMES for s in "FM" for g in GIVEN_NAMES[s]]
    family, sex, given = combos[int(tree.permutation(len(combos))[index % len(combos)])]
    mrn = 10_000_000 + (int(tree.integers(0, 89_999_989)) + index * 104_729) % 89_999_989
    accession = 1_000_000 + (int(tree.integers(0, 8_999_999)) + index * 104_729) % 8_999_999

    born = date(int(rng.integers(births[0], births[1] + 1)), 1, 1) + timedelta(
        days=int(rng.integers(0, 365))
    )
    taken = datetime(year, 1, 8, 8, 0, tzinfo=UTC) + timedelta(
        days=int(rng.integers(0, 330)), seconds=int(rng.integers(0, 9 * 3600))
    )
    entropy = [str(seed), label]
    identity = {
        "PatientName": f"{family}^{given}",
        "PatientID": str(mrn),
        "PatientBirthDate": f"{born:%Y%m%d}",
        "PatientAddress": f"{rng.choice(STREETS)} {rng.integers(1, 200)}, {rng.choice(TOWNS)}",
        "OtherPatientIDs": f"{born:%y.%m.%d}-{rng.integers(1, 999):03d}.{rng.integers(1, 97):02d}",
        "InstitutionName": SITES[site]["InstitutionName"],
        "InstitutionAddress": SITES[site]["InstitutionAddress"],
        "ReferringPhysicianName": f"{rng.choice(STAFF)}^^DR",
        "OperatorsName": str(rng.choice(STAFF)),
        "PerformingPhysicianName": f"{rng.choice(STAFF)}^^DR",
        "StationName": SITES[site]["StationName"],
        "DeviceSerialNumber": SITES[site]["DeviceSerialNumber"],
        "CameraSerialNumber": SITES[site]["CameraSerialNumber"],
        "AccessionNumber": f"CB{taken:%y}-{accession}",
        "StudyInstanceUID": generate_uid(entropy_srcs=[*entropy, "study"]),
        "SeriesInstanceUID": generate_uid(entropy_srcs=[*entropy, "series"]),
        "FrameOfReferenceUID": generate_uid(entropy_srcs=[*entropy, "frame"]),
    }
    person = DemoPatient(label, folder, tuple(tags), identity)
    return _Visit(person, index, site, sex, taken, description)


def _write_patient(root: Path, visit: _Visit, seed: int, size: DemoScale) -> Iterator[Path]:
    base = root / visit.person.folder / visit.person.label
    rng = np.random.default_rng([seed, _PIXELS, visit.index, size.matrix, size.slices])
    # Anatomy shared by the CBCT and the scans: head size and missing teeth (lower, upper).
    anatomy = np.random.default_rng([seed, _ANATOMY, visit.index])
    head_size = float(anatomy.uniform(0.94, 1.04))
    missing = anatomy.random((2, 14)) < 0.08
    writers = (
        _write_cbct(base / "cbct", visit, size, _Phantom(size.matrix, head_size, missing), rng),
        _write_stl(base / "ios", visit, size.stl_triangles, missing),
        _write_photos(base / "intraoral-photo", visit, size, rng),
    )
    mtime = visit.taken.timestamp()
    for writer in writers:
        for path in writer:
            # A fixed mtime keeps re-runs identical for tools that look at file times.
            os.utime(path, (mtime, mtime))
            yield path


# --- CBCT: phantom ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Map:
    """A normalised distance map over a window of the slice; a slice thresholds it."""

    window: tuple[slice, slice]
    values: NDArray[np.float32]

    def paint(self, img: NDArray[np.int16], limit: float, hu: int) -> None:
        view = img[self.window]
        np.copyto(view, np.int16(hu + HU_OFFSET), where=self.values < limit)


def _coords(m: int) -> NDArray[np.float32]:
    """Pixel centres of an ``m``-wide axis, normalised to -1..1."""
    return ((np.arange(m) + 0.5) / m * 2 - 1).astype(np.float32)


def _span(m: int, low: float, high: float) -> slice:
    """The pixels of an ``m``-wide axis between two normalised coordinates."""
    return slice(max(0, int((low + 1) / 2 * m)), min(m, int((high + 1) / 2 * m) + 1))


def _ellipse(m: int, cx: float, cy: float, ax: float, ay: float) -> _Map:
    """Squared normalised radius of an axis-aligned ellipse, over a box that fits limits < 1.5."""
    rows, cols = _span(m, cy - 1.25 * ay, cy + 1.25 * ay), _span(m, cx - 1.25 * ax, cx + 1.25 * ax)
    x = (_coords(m)[None, cols] - cx) / ax
    y = (_coords(m)[rows, None] - cy) / ay
    return _Map((rows, cols), (x * x + y * y).astype(np.float32))


def _arch(m: int, ax: float, ay: float, cy: float, missing: NDArray[np.bool_]) -> tuple[_Map, _Map]:
    """Distance maps of a horseshoe jaw: across the bone band, and to the nearest tooth centre."""
    rows, cols = _span(m, cy - 1.25 * ay, cy + 0.35), _span(m, -1.25 * ax, 1.25 * ax)
    x = _coords(m)[None, cols]
    y = _coords(m)[rows, None]
    radius = np.sqrt((x / ax) ** 2 + ((y - cy) / ay) ** 2)
    band = np.abs(radius - 1) / 0.17
    band = np.where(y < cy + 0.3, band, np.inf).astype(np.float32)  # the rami end behind
    tooth = np.full(band.shape, np.inf, np.float32)
    for i in np.flatnonzero(~missing):
        phi = -1.62 + 3.24 * i / 13  # 14 positions, incisors at the front
        centre_x, centre_y = ax * np.sin(phi), cy - ay * np.cos(phi)
        r = 0.035 + 0.03 * abs(np.sin(phi))  # molars are wider than incisors
        np.minimum(tooth, np.hypot(x - centre_x, y - centre_y) / r, out=tooth)
    return _Map((rows, cols), band), _Map((rows, cols), tooth)


class _Phantom:
    """A head-like anatomy in normalised coordinates (x, y, z in -1..1; z inferior->superior)."""

    def __init__(self, m: int, size: float, missing: NDArray[np.bool_]) -> None:
        inside = _coords(m)[None, :] ** 2 + _coords(m)[:, None] ** 2 < 1
        self.empty = np.where(inside, np.int16(24), np.int16(0))  # air, and 0 outside the FOV
        self.gain = np.where(inside, np.int16(NOISE_GAIN), np.int16(0))
        self.head = _ellipse(m, 0, 0.04, 0.8 * size, 0.88 * size)
        self.spine = _ellipse(m, 0, 0.62, 0.14, 0.12)
        self.canal = _ellipse(m, 0, 0.66, 0.05, 0.04)
        self.airway = _ellipse(m, 0, 0.38, 0.1 * size, 0.07)
        self.sinuses = (_ellipse(m, -0.3, -0.05, 0.16, 0.2), _ellipse(m, 0.3, -0.05, 0.16, 0.2))
        self.lower = _arch(m, 0.42 * size, 0.5 * size, 0.1, missing[0])
        self.upper = _arch(m, 0.45 * size, 0.53 * size, 0.08, missing[1])

    def slice(self, z: float) -> NDArray[np.int16]:
        """Stored values (HU + 1024) of the axial slice at height ``z``."""
        img = self.empty.copy()
        self.head.paint(img, 1 - 0.35 * max(0.0, -z - 0.3) ** 2, 40)
        self.spine.paint(img, 1.0, 700)
        self.canal.paint(img, 1.0, 10)
        self.airway.paint(img, 1.0 - 0.5 * z, -1000)
        if z > 0.45:
            for sinus in self.sinuses:
                sinus.paint(img, min(1.0, (z - 0.45) * 4), -1000)
        (band, teeth) = self.lower if z < 0 else self.upper
        depth = abs(z)  # distance from the occlusal plane
        if depth > 0.12:  # jaw bone: cortical shell around cancellous bone
            band.paint(img, 1.0, 1300)
            band.paint(img, 0.7, 450)
        if 0.02 < depth < 0.62:  # teeth: enamel crowns near the occlusal plane, roots below
            radius = 1.0 if depth < 0.3 else 1.0 - (depth - 0.3) * 1.4
            if depth < 0.22:
                teeth.paint(img, radius, 2600)
            teeth.paint(img, radius * 0.8, 1700)
            teeth.paint(img, radius * 0.25, 30)  # pulp
        return img


def _random_int8(rng: np.random.Generator, lanes: int, n: int) -> NDArray[np.int8]:
    """``lanes`` rows of ``n`` uniform int8; raw generator output is ~5x faster than bytes()."""
    words = rng.bit_generator.random_raw(-(-lanes * n // 8))
    raw: NDArray[np.int8] = words.view(np.int8)[: lanes * n].reshape(lanes, n)
    return raw


def _noise(rng: np.random.Generator, gain: NDArray[np.int16]) -> NDArray[np.int16]:
    """Near-Gaussian noise (sum of four uniform bytes), ~10x faster than standard_normal."""
    raw = _random_int8(rng, 4, gain.size)
    acc = raw[0].astype(np.int16)
    for lane in raw[1:]:
        acc += lane
    acc *= gain.reshape(-1)  # |sum| <= 512 and gain < 64: no int16 overflow
    acc >>= 7
    noise: NDArray[np.int16] = acc.reshape(gain.shape)
    return noise


# --- CBCT: files --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Geometry:
    """Voxel grid in patient coordinates (mm), centred on the origin; shared by DICOM and NIfTI."""

    spacing: float
    thickness: float
    corner: float  # x and y of the first pixel centre
    first_z: float

    @classmethod
    def of(cls, size: DemoScale) -> _Geometry:
        # A thickness with two decimals keeps every written position exact in DS text.
        thickness = round(FOV_MM[1] / size.slices, 2)
        spacing = FOV_MM[0] / size.matrix
        return cls(
            spacing, thickness, (spacing - FOV_MM[0]) / 2, -thickness * (size.slices - 1) / 2
        )


def _ds(value: float) -> str:
    """A decimal string short enough for DS (16 chars) and without float noise."""
    return f"{value:.5f}".rstrip("0").rstrip(".")


def _write_cbct(
    folder: Path, visit: _Visit, size: DemoScale, phantom: _Phantom, rng: np.random.Generator
) -> Iterator[Path]:
    ident = visit.person.identity
    grid = _Geometry.of(size)
    ds = _cbct_header(visit, size, grid)
    series = folder / "raw" / "series_001"
    series.mkdir(parents=True, exist_ok=True)
    nifti = folder / "processed" / "volume.nii.gz"
    nifti.parent.mkdir(parents=True, exist_ok=True)
    entropy = [ident["SeriesInstanceUID"]]
    # The processed volume is the denoised reconstruction, streamed through gzip as it is made.
    gz = zlib.compressobj(1, zlib.DEFLATED, 31)
    with open(nifti, "wb") as out:
        out.write(gz.compress(_nifti_header(ident, size, grid)))
        for k in range(size.slices):
            pixels = phantom.slice((k + 0.5) / size.slices * 2 - 1)
            hu = (pixels - np.int16(HU_OFFSET)).astype("<i2", copy=False)
            out.write(gz.compress(hu.tobytes()))
            pixels += _noise(rng, phantom.gain)
            np.clip(pixels, 0, 4095, out=pixels)
            uid = generate_uid(entropy_srcs=[*entropy, str(k + 1)])
            location = _ds(grid.first_z + k * grid.thickness)
            ds.file_meta.MediaStorageSOPInstanceUID = uid
            ds.SOPInstanceUID = uid
            ds.InstanceNumber = k + 1
            ds.ImagePositionPatient = [_ds(grid.corner), _ds(grid.corner), location]
            ds.SliceLocation = location
            ds.PixelData = pixels.astype("<u2", copy=False).tobytes()
            path = series / f"{k + 1:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            yield path
        out.write(gz.flush())
    yield nifti


def _cbct_header(visit: _Visit, size: DemoScale, grid: _Geometry) -> Dataset:
    ident = visit.person.identity
    study_date, study_time = f"{visit.taken:%Y%m%d}", f"{visit.taken:%H%M%S}"
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    for prefix in ("Study", "Series", "Acquisition", "Content"):
        setattr(ds, f"{prefix}Date", study_date)
        setattr(ds, f"{prefix}Time", study_time)
    ds.AccessionNumber = ident["AccessionNumber"]
    ds.Modality = "CT"
    for key in ("Manufacturer", "ManufacturerModelName"):
        setattr(ds, key, SITES[visit.site][key])
    ds.StudyDescription = visit.description
    ds.PatientSex = visit.sex
    for key, value in ident.items():
        if key != "CameraSerialNumber":  # the one value that only the photos carry
            setattr(ds, key, value)
    ds.SeriesDescription = f"CBCT {grid.spacing:.2f} mm raw"
    ds.IssuerOfPatientID = "MRN"
    other = Dataset()
    other.PatientID = ident["OtherPatientIDs"]
    other.IssuerOfPatientID = "RRN"  # national register number
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = [other]
    ds.BodyPartExamined = "HEAD"
    ds.SliceThickness = _ds(grid.thickness)
    ds.KVP = "90"
    ds.SoftwareVersions = "4.1.2"
    ds.XRayTubeCurrent = 8
    ds.PatientPosition = "HFS"
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = ["0", "0", "0"]  # set per slice
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = "0"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size.matrix
    ds.PixelSpacing = [_ds(grid.spacing), _ds(grid.spacing)]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = "500"
    ds.WindowWidth = "3000"
    ds.RescaleIntercept = str(-HU_OFFSET)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    block = ds.private_block(0x0009, "DEMO VENDOR", create=True)
    block.add_new(0x10, "LO", ident["PatientName"])  # vendors do copy names into private tags
    ds.add_new(0x7FE00010, "OW", b"")
    return ds


def _nifti_header(ident: dict[str, str], size: DemoScale, grid: _Geometry) -> bytes:
    """NIfTI-1 single-file header (348 bytes) plus an empty extension flag, so data start at 352.

    The affine maps DICOM's LPS patient axes to NIfTI's RAS: x and y flip sign.
    """
    spacing, thick, x0, z0 = grid.spacing, grid.thickness, grid.corner, grid.first_z
    descrip = f"CBCT denoised {ident['PatientName']} {ident['PatientID']}"
    fields = (
        348,
        b"",
        ident["PatientID"].encode(),
        0,
        0,
        b"r",
        0,
        (3, size.matrix, size.matrix, size.slices, 1, 1, 1, 1),
        (0.0, 0.0, 0.0),
        0,
        4,
        16,
        0,  # datatype int16, bitpix, slice_start
        (1.0, spacing, spacing, thick, 0.0, 0.0, 0.0, 0.0),
        352.0,
        1.0,
        0.0,
        0,
        0,
        2,
        0.0,
        0.0,
        0.0,
        0.0,
        0,
        0,  # slice_end/code, units mm, cal, timing, gl
        descrip.encode()[:80],
        ident["AccessionNumber"].encode()[:24],
        1,
        1,
        (0.0, 0.0, 1.0, -x0, -x0, z0),  # quaternion of diag(-1, -1, 1), then offsets
        (-spacing, 0.0, 0.0, -x0, 0.0, -spacing, 0.0, -x0, 0.0, 0.0, thick, z0),
        b"",
        b"n+1\0",
    )
    flat: list[object] = []
    for value in fields:
        flat.extend(value if isinstance(value, tuple) else [value])
    fmt = "<i10s18sihcB8h3fhhhh8ffffhBBffffii80s24shh6f12f16s4s"
    return struct.pack(fmt, *flat) + b"\0\0\0\0"


# --- Intraoral scans ----------------------------------------------------------------------------

_STL_TRIANGLE = np.dtype([("normal", "<f4", (3,)), ("vertices", "<f4", (3, 3)), ("attr", "<u2")])


def _write_stl(
    folder: Path, visit: _Visit, triangles: int, missing: NDArray[np.bool_]
) -> Iterator[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    ident = visit.person.identity
    for jaw in ("upper", "lower"):
        path = folder / f"{jaw}.stl"
        # Scanners write the case name into the header, and it must not start with "solid".
        text = f"{SITES[visit.site]['scanner']} {ident['PatientName']} {ident['PatientID']} {jaw}"
        upper = jaw == "upper"
        mesh = _arch_mesh(triangles, upper, missing[1 if upper else 0])
        with open(path, "wb") as fh:
            fh.write(text.encode()[:80].ljust(80, b" "))
            fh.write(struct.pack("<I", len(mesh)))
            fh.write(mesh.tobytes())
        yield path


def _grid(quads: int) -> tuple[int, int]:
    """Quads along and across the arch: the divisor pair of ``quads`` closest to 8:1."""
    limit = max(1, int((quads / 8) ** 0.5))
    across = max(d for d in range(1, limit + 1) if quads % d == 0)
    return quads // across, across


def _arch_mesh(triangles: int, upper: bool, missing: NDArray[np.bool_]) -> NDArray[np.void]:
    """A horseshoe-shaped gum ridge with one bump per tooth, in millimetres."""
    along, across = _grid(triangles // 2)
    ax, ay = (27.0, 25.0) if upper else (25.0, 23.0)
    phi = np.linspace(-1.9, 1.9, along + 1)[:, None]
    v = np.linspace(-1.0, 1.0, across + 1)[None, :]
    half_width = 4.0 + 2.5 * np.abs(np.sin(phi))  # molars are wider than incisors
    tangent_norm = np.hypot(ax * np.cos(phi), ay * np.sin(phi))
    nx, ny = ay * np.sin(phi) / tangent_norm, -ax * np.cos(phi) / tangent_norm
    x = ax * np.sin(phi) + v * half_width * nx
    y = -ay * np.cos(phi) + v * half_width * ny
    ridge = np.sqrt(np.clip(1 - v * v, 0, None))
    crowns = np.zeros_like(phi)
    for i in np.flatnonzero(~missing):
        centre = -1.75 + 3.5 * i / 13
        crowns = crowns + np.exp(-(((phi - centre) / 0.09) ** 2))
    z = 6.0 * ridge + 7.0 * crowns * np.exp(-((v / 0.55) ** 2))
    if upper:
        z = 30.0 - z  # the upper arch faces down, 30 mm above
    points = np.stack(np.broadcast_arrays(x, y, z), axis=-1).astype(np.float32)
    p00, p10 = points[:-1, :-1], points[1:, :-1]
    p01, p11 = points[:-1, 1:], points[1:, 1:]
    # Reverse the winding for the mirrored arch so normals keep pointing out of the surface.
    first = (p00, p10, p11) if upper else (p00, p11, p10)
    second = (p00, p11, p01) if upper else (p00, p01, p11)
    tris = np.concatenate(
        [np.stack(first, axis=-2).reshape(-1, 3, 3), np.stack(second, axis=-2).reshape(-1, 3, 3)]
    )
    normal = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
    length = np.linalg.norm(normal, axis=1, keepdims=True)
    mesh = np.zeros(len(tris), dtype=_STL_TRIANGLE)
    mesh["normal"] = normal / np.where(length > 0, length, 1)
    mesh["vertices"] = tris
    return mesh


# --- Intraoral photos ---------------------------------------------------------------------------


def _write_photos(
    folder: Path, visit: _Visit, size: DemoScale, rng: np.random.Generator
) -> Iterator[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    ident = visit.person.identity
    make, model = SITES[visit.site]["camera"].split("|")
    lat, lon = (float(v) for v in SITES[visit.site]["gps"].split(","))
    for n in range(1, size.photos + 1):
        path = folder / f"photo_{n}.jpg"
        shot = visit.taken + timedelta(minutes=20, seconds=37 * n)
        exif = Image.Exif()
        exif[0x010F] = make
        exif[0x0110] = model
        exif[0x010E] = f"Intraoral photo {ident['PatientName']} {ident['PatientID']}"
        exif[0x013B] = ident["OperatorsName"]  # Artist
        exif[0x0132] = f"{shot:%Y:%m:%d %H:%M:%S}"  # DateTime
        details = exif.get_ifd(IFD.Exif)
        details[0x9003] = f"{shot:%Y:%m:%d %H:%M:%S}"  # DateTimeOriginal
        details[0xA431] = ident["CameraSerialNumber"]  # BodySerialNumber
        gps = exif.get_ifd(IFD.GPSInfo)
        gps[0x0000] = b"\x02\x03\x00\x00"  # GPSVersionID
        gps[0x0001], gps[0x0002] = "N", _dms(lat)
        gps[0x0003], gps[0x0004] = "E", _dms(lon)
        comment = f"{ident['PatientName']} {ident['PatientID']} {ident['AccessionNumber']}"
        image = Image.fromarray(_photo_pixels(size.photo_size, rng), "RGB")
        image.save(path, "JPEG", quality=88, exif=exif, comment=comment.encode())
        yield path


def _dms(degrees: float) -> tuple[float, float, float]:
    minutes = (degrees % 1) * 60
    return (float(int(degrees)), float(int(minutes)), round((minutes % 1) * 60, 2))


def _photo_pixels(size: tuple[int, int], rng: np.random.Generator) -> NDArray[np.uint8]:
    """Pink gums with a row of off-white teeth, lit from the top, with sensor noise."""
    width, height = size
    # Shapes and light are smooth: draw them at 1/4 size and let Pillow upscale (much faster).
    u = np.linspace(-1, 1, max(2, width // 4), dtype=np.float32)[None, :]
    v = np.linspace(-1, 1, max(2, height // 4), dtype=np.float32)[:, None]
    light = 1.0 - 0.35 * (v + 1) / 2 - 0.25 * u * u
    gum = np.array([205, 105, 115], np.float32)
    tooth = np.array([238, 230, 210], np.float32)
    across = (u + float(rng.uniform(-0.1, 0.1))) * 4.5 % 1 - 0.5  # position within a tooth
    row = (np.abs(v) - 0.19) / (0.17 - 0.04 * u * u)  # upper and lower row, smaller at the sides
    teeth = (across / 0.44) ** 2 + row**2 < 1
    small = (np.where(teeth[..., None], tooth, gum) * light[..., None]).astype(np.uint8)
    smooth = Image.fromarray(small, "RGB").resize(size, Image.Resampling.BILINEAR)
    pixels = np.asarray(smooth, dtype=np.int16)
    lanes = _random_int8(rng, 2, width * height) >> 4  # triangular noise, sd ~6 levels
    pixels += (lanes[0] + lanes[1]).reshape(height, width, 1)
    out: NDArray[np.uint8] = np.clip(pixels, 0, 255).astype(np.uint8)
    return out
