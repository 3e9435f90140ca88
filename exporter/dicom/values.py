"""DICOM header values that data managers curate: which fields may be edited, and the check and
normalisation of a typed value by its value representation (VR) and multiplicity (VM).

Rules follow DICOM PS3.5 section 6.2 (Table 6.2-1). A value is checked once, when it is typed,
so that what is stored is exactly what the export later writes with pydicom. Several values
are separated by a backslash; an empty text is the empty (zero-length) value, which every
field accepts. Length limits count characters, as the standard does.
"""

from __future__ import annotations

import calendar
import datetime
import difflib
import itertools
import math
import re
import struct
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.datadict import (
    dictionary_has_tag,
    get_entry,
    keyword_dict,
    repeater_has_keyword,
    repeater_has_tag,
    tag_for_keyword,
)

from exporter.dicom.header import tag_text
from exporter.errors import InvalidValue

TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT"}
)
NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD"})
BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN", "AT"})
# Single-valued by definition, so a backslash in them is text, not a separator.
UNSPLIT_VRS = frozenset({"LT", "ST", "UT", "UR"})
# Explicit VR files give these VRs a 16-bit value length; the others (UC, UR, UT) have 32 bits.
SHORT_LENGTH_VRS = (TEXT_VRS | NUMBER_VRS) - {"UC", "UR", "UT"}
MAX_SHORT_LENGTH = 0xFFFE
MAX_LONG_LENGTH = 0xFFFFFFFE
# The export copies pixel data byte for byte, so the fields that say how to read it stay as
# they are in the source.
PIXEL_LAYOUT = frozenset(
    {
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "PlanarConfiguration",
        "NumberOfFrames",
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
    }
)

CURATABLE_HINT = (
    "Any current public DICOM field that holds text, a code, a date or time, a person's name or "
    "a number can be curated. Not curatable: UIDs (changed only by de-identification), "
    "sequences, binary and pixel data, file meta information and group lengths, the character "
    "set, the fields that describe how the pixel data is stored (the pixels are copied "
    "unchanged), fields whose VR depends on other fields, and private or retired fields."
)

ElementValue = str | int | float | list[str] | list[int] | list[float] | None


@dataclass(frozen=True)
class FieldSpec:
    """A curatable field of the DICOM data dictionary."""

    tag: int
    keyword: str
    name: str
    vr: str
    vm: str

    def tag_text(self) -> str:
        """The tag as DICOM prints it, e.g. ``(0008,1030)``."""
        return tag_text(self.tag)


def field_spec(keyword_or_tag: str) -> FieldSpec:
    """The field named by a keyword (``StudyDescription``) or a tag (``0008,1030``,
    ``(0008,1030)`` or ``00081030``).

    Raises :class:`InvalidValue` if the field is unknown or cannot be curated, saying why.
    """
    text = keyword_or_tag.strip()
    tag = _parse_tag(text)
    if tag is None and text:
        tag = tag_for_keyword(text)
    if tag is None:
        raise InvalidValue(_unknown(text))
    reason = _refusal(tag)
    if reason:
        raise InvalidValue(f"{_label(tag)} {reason}")
    vr, vm, name, _, keyword = get_entry(tag)
    return FieldSpec(tag=tag, keyword=keyword, name=name, vr=vr, vm=vm)


def curatable(keyword: str) -> bool:
    """Whether data managers may edit the field (a keyword, or a tag as :func:`field_spec`
    takes it). :func:`field_spec` says why not."""
    try:
        field_spec(keyword)
    except InvalidValue:
        return False
    return True


def validate_value(spec: FieldSpec, text: str) -> str:
    """The value as it will be written into DICOM, or :class:`InvalidValue` saying what is
    wrong and how to fix it.

    Several values are separated by ``\\`` (except in LT, ST, UT and UR, which hold one value
    in which ``\\`` is text) and their number must fit the field's VM. An empty text is the
    empty value. Spaces the standard calls insignificant are trimmed (leading and trailing,
    or only trailing for ST, LT, UT and UC, where leading spaces count).

    Data managers type dates and times the ISO way, so a DA value may be ``YYYY-MM-DD`` and a
    TM value ``HH:MM``, ``HH:MM:SS`` or ``HH:MM:SS.FFFFFF``; both are normalised to the DICOM
    form (``YYYYMMDD``, ``HHMMSS...``). FL and FD values are normalised to the shortest text
    that gives the stored number; IS and DS values keep the form typed.
    """
    check = _VALIDATORS.get(spec.vr)
    if check is None:
        reason = _refusal(spec.tag) or f"has VR {spec.vr}: it cannot be curated"
        raise InvalidValue(f"{spec.keyword} {spec.tag_text()} {reason}")
    if not text.strip(" "):
        return ""
    values = [text] if spec.vr in UNSPLIT_VRS else text.split("\\")
    _check_multiplicity(spec, text, len(values))
    normalised = []
    for index, value in enumerate(values, 1):
        label = spec.keyword if len(values) == 1 else f"{spec.keyword} value {index}"
        value = value.rstrip(" ") if spec.vr in {"LT", "ST", "UT", "UC"} else value.strip(" ")
        if not value:
            raise InvalidValue(
                f"{label} of {len(values)} is empty in {text!r}: fill it in or remove the "
                "extra '\\'"
            )
        normalised.append(check(label, value))
    joined = "\\".join(normalised)
    _check_total_length(spec, joined, len(normalised))
    return joined


def to_element_value(spec: FieldSpec, text: str) -> ElementValue:
    """The validated value as pydicom takes it in ``ds.<keyword> = ...``: ``int`` for US, SS,
    UL and SL, ``float`` for FL and FD, ``str`` otherwise (IS and DS too, so the typed form is
    written); a list when there are several values; ``None`` for an empty number and ``""``
    for an empty text."""
    validated = validate_value(spec, text)
    if not validated:
        return None if spec.vr in NUMBER_VRS else ""
    values = [validated] if spec.vr in UNSPLIT_VRS else validated.split("\\")
    if spec.vr in {"FL", "FD"}:
        floats = [float(v) for v in values]
        return floats[0] if len(floats) == 1 else floats
    if spec.vr in NUMBER_VRS:
        ints = [int(v) for v in values]
        return ints[0] if len(ints) == 1 else ints
    return values[0] if len(values) == 1 else values


# -- which fields ------------------------------------------------------------------------------

_TAG_FORMS = (
    re.compile(r"\(([0-9A-Fa-f]{4}),\s*([0-9A-Fa-f]{4})\)"),
    re.compile(r"([0-9A-Fa-f]{4}),\s*([0-9A-Fa-f]{4})"),
    re.compile(r"(?:0[xX])?([0-9A-Fa-f]{4})([0-9A-Fa-f]{4})"),
)


def _parse_tag(text: str) -> int | None:
    for form in _TAG_FORMS:
        match = form.fullmatch(text)
        if match:
            return int(match[1] + match[2], 16)
    return None


def _label(tag: int) -> str:
    if dictionary_has_tag(tag):
        return f"{get_entry(tag)[4]} {tag_text(tag)}"
    return f"Tag {tag_text(tag)}"


_REPEATING = (
    "belongs to a repeating group (overlays, curves and the like) whose group number varies "
    "from file to file"
)


def _unknown(text: str) -> str:
    if repeater_has_keyword(text):
        return f"{text} {_REPEATING}: it cannot be curated"
    message = (
        f"{text!r} is not a DICOM keyword or tag: give a keyword such as StudyDescription or a "
        "tag such as (0008,1030)"
    )
    close = difflib.get_close_matches(text, keyword_dict, n=1, cutoff=0.8)
    lower = [k for k in keyword_dict if k.lower() == text.lower()]
    suggestion = lower or close
    return f"{message}; did you mean {suggestion[0]}?" if suggestion else message


def _refusal(tag: int) -> str | None:
    """Why the field cannot be curated (after its label), or None if it can."""
    group, element = tag >> 16, tag & 0xFFFF
    if group % 2:
        return "is a private tag: only public DICOM fields can be curated"
    reason = _structural_refusal(group, element)
    if reason is None and not dictionary_has_tag(tag):
        if not repeater_has_tag(tag):
            return (
                "is not in the DICOM data dictionary: check the tag, or give a keyword such as "
                "StudyDescription"
            )
        reason = _REPEATING
    if reason is None:
        vr, _, _, retired, keyword = get_entry(tag)
        reason = _entry_refusal(vr, bool(retired), keyword)
    return None if reason is None else f"{reason}: it cannot be curated"


def _structural_refusal(group: int, element: int) -> str | None:
    if group == 0x0000:
        return "is a DIMSE command element, used in network messages, never in files"
    if group == 0x0002:
        return (
            "is file meta information, which the writer derives from the data set (transfer "
            "syntax, SOP class and instance)"
        )
    if group == 0x0004:
        return "belongs to the directory records of a DICOMDIR, not to an image"
    if element == 0x0000:
        return "is a group length, which the writer computes"
    if group == 0x7FE0:
        return "is pixel data, which the export copies byte for byte"
    return None


def _entry_refusal(vr: str, retired: bool, keyword: str) -> str | None:
    if keyword == "SpecificCharacterSet":
        return "says how the text of the file is encoded, and the writer sets it to fit the values"
    if keyword in PIXEL_LAYOUT:
        return (
            "describes how the pixel data is stored; the export copies the pixels unchanged, so "
            "another value would corrupt the image"
        )
    if vr == "UI":
        return "is a UID, and UIDs are never changed by curation, only by de-identification"
    if vr == "SQ":
        return "is a sequence of nested items, which cannot be typed in a form"
    if " or " in vr:
        return (
            f"has VR {vr!r}, which depends on other fields of the file (such as "
            "PixelRepresentation)"
        )
    if vr in BINARY_VRS:
        return f"holds binary data (VR {vr}), which cannot be typed in a form"
    if vr not in TEXT_VRS | NUMBER_VRS:
        return f"has VR {vr}, which curation does not support"
    if retired:
        return "is retired from the DICOM standard and current files should not carry it"
    return None


# -- how many values ---------------------------------------------------------------------------

_VM = re.compile(r"(\d+)(?:-(\d+)?(n)?)?")
# Sample values for the examples in multiplicity errors (cycled to the number wanted).
_EXAMPLES: dict[str, tuple[str, ...]] = {
    "AE": ("STORESCP",),
    "AS": ("045Y",),
    "CS": ("ORIGINAL", "PRIMARY"),
    "DA": ("20240131",),
    "DS": ("0.5", "0.25"),
    "DT": ("20240131143015",),
    "FD": ("0.5", "0.25"),
    "FL": ("0.5", "0.25"),
    "IS": ("12", "7"),
    "LO": ("text",),
    "PN": ("Doe^John",),
    "SH": ("text",),
    "SL": ("-12", "7"),
    "SS": ("-12", "7"),
    "TM": ("143015",),
    "UC": ("text",),
    "UL": ("12", "7"),
    "US": ("12", "7"),
}


def _multiplicity(vm: str) -> tuple[int, int | None, int]:
    """(least, most or None for no limit, step): '3-3n' is (3, None, 3)."""
    match = _VM.fullmatch(vm)
    if match is None:  # not in the dictionary today; accept any number rather than refuse
        return 1, None, 1
    least = int(match[1])
    if match[2] is None and match[3] is None:
        return least, least, 1
    if match[3]:
        return least, None, int(match[2] or 1)
    return least, int(match[2]), 1


def _describe(vm: str) -> str:
    least, most, step = _multiplicity(vm)
    if most == least:
        return "a single value" if least == 1 else f"exactly {least} values"
    if most is not None:
        joiner = "or" if most == least + 1 else "to"
        return f"{least} {joiner} {most} values"
    if step > 1:
        return f"a multiple of {step} values ({step}, {2 * step}, {3 * step}, ...)"
    return f"{least} or more values" if least > 1 else "one or more values"


def _check_multiplicity(spec: FieldSpec, text: str, count: int) -> None:
    least, most, step = _multiplicity(spec.vm)
    if least <= count and (most is None or count <= most) and count % step == 0:
        return
    if most == 1:
        raise InvalidValue(
            f"{spec.keyword} takes a single value and '\\' separates values, so it cannot "
            f"appear in the text: remove it from {text!r}"
        )
    samples = itertools.cycle(_EXAMPLES.get(spec.vr, ("x",)))
    example = "\\".join(itertools.islice(samples, max(least, step)))
    raise InvalidValue(
        f"{spec.keyword} takes {_describe(spec.vm)} separated by '\\' (e.g. {example}); "
        f"got {count} in {text!r}"
    )


def _check_total_length(spec: FieldSpec, joined: str, count: int) -> None:
    size = _BINARY_SIZE[spec.vr] * count if spec.vr in _BINARY_SIZE else len(joined.encode())
    size += size % 2
    limit = MAX_SHORT_LENGTH if spec.vr in SHORT_LENGTH_VRS else MAX_LONG_LENGTH
    if size > limit:
        raise InvalidValue(
            f"{spec.keyword} is too long to store: its value takes {size} bytes and a {spec.vr} "
            f"field holds at most {limit}; shorten it or remove values"
        )


# -- one value ---------------------------------------------------------------------------------

_CHAR_NAMES = {
    "\n": "a line break (LF)",
    "\r": "a carriage return (CR)",
    "\t": "a tab",
    "\f": "a form feed (FF)",
    "\x1b": "an escape character (ESC)",
    "\u2028": "a line separator (U+2028)",
    "\u2029": "a paragraph separator (U+2029)",
}


def _check_characters(label: str, value: str, allowed: str = "") -> None:
    single_line = not allowed
    for position, char in enumerate(value, 1):
        category = unicodedata.category(char)
        bad = category in {"Cc", "Cs"} or (single_line and category in {"Zl", "Zp"})
        if bad and char not in allowed:
            name = _CHAR_NAMES.get(char, f"the character U+{ord(char):04X}")
            where = "a single line of text" if single_line else "text"
            raise InvalidValue(
                f"{label} must be {where} without control characters: remove {name} at "
                f"position {position}"
            )


def _check_ascii(label: str, vr: str, value: str) -> None:
    for position, char in enumerate(value, 1):
        if not char.isascii():
            raise InvalidValue(
                f"{label} takes ASCII characters only ({vr} values use the basic character "
                f"set): replace {char!r} at position {position}"
            )


def _check_length(label: str, value: str, most: int) -> None:
    if len(value) > most:
        raise InvalidValue(
            f"{label} must be at most {most} characters; got {len(value)}: shorten it"
        )


def _text(most: int, allowed: str = "") -> Callable[[str, str], str]:
    def check(label: str, value: str) -> str:
        _check_characters(label, value, allowed)
        _check_length(label, value, most)
        return value

    return check


def _ascii_value(vr: str, pattern: str, wanted: str, most: int = 0) -> Callable[[str, str], str]:
    regex = re.compile(pattern)

    def check(label: str, value: str) -> str:
        _check_characters(label, value)
        _check_ascii(label, vr, value)
        if most:
            _check_length(label, value, most)
        if regex.fullmatch(value) is None:
            hint = ""
            if value.upper() != value and regex.fullmatch(value.upper()):
                hint = f"; use upper case: {value.upper()!r}"
            raise InvalidValue(f"{label} must be {wanted}{hint}; got {value!r}")
        return value

    return check


_DECIMAL = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_check_ae = _ascii_value(
    "AE",
    r"[\x20-\x5b\x5d-\x7e]+",
    "an AE title of at most 16 ASCII characters (e.g. STORESCP)",
    16,
)
_check_as = _ascii_value(
    "AS",
    r"[0-9]{3}[DWMY]",
    "an age as 3 digits and a unit D, W, M or Y (e.g. 045Y for 45 years, 006M for 6 months)",
)
_check_cs = _ascii_value(
    "CS",
    r"[A-Z0-9 _]+",
    "a code of at most 16 characters A-Z, 0-9, space or underscore (e.g. ORIGINAL)",
    16,
)
_check_ds_format = _ascii_value(
    "DS", _DECIMAL, "a decimal number of at most 16 characters (e.g. 0.5, -12 or 1.5e-3)", 16
)
_check_is_format = _ascii_value(
    "IS", r"[+-]?[0-9]+", "a whole number of at most 12 characters (e.g. 12 or -3)", 12
)


def _check_ds(label: str, value: str) -> str:
    _check_ds_format(label, value)
    if not math.isfinite(float(value)):
        raise InvalidValue(f"{label} is too large to be a number: got {value!r}")
    return value


def _check_is(label: str, value: str) -> str:
    _check_is_format(label, value)
    if not -(2**31) <= int(value) <= 2**31 - 1:
        raise InvalidValue(
            f"{label} must be a whole number from -2147483648 to 2147483647; got {value!r}"
        )
    return value


def _calendar_error(year: int, month: int, day: int | None) -> str | None:
    if year < 1:
        return "year 0000 does not exist"
    if not 1 <= month <= 12:
        return f"month {month:02d} does not exist"
    if day is not None:
        try:
            datetime.date(year, month, day)
        except ValueError:
            last = calendar.monthrange(year, month)[1]
            return (
                f"day {day:02d} does not exist: {calendar.month_name[month]} {year} has {last} days"
            )
    return None


_DA = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})|([0-9]{4})-([0-9]{2})-([0-9]{2})")
_DA_WANTED = "a date as YYYYMMDD or YYYY-MM-DD (e.g. 20240131)"


def _check_da(label: str, value: str) -> str:
    _check_characters(label, value)
    _check_ascii(label, "DA", value)
    match = _DA.fullmatch(value)
    if match is None:
        raise InvalidValue(f"{label} must be {_DA_WANTED}; got {value!r}")
    year, month, day = (int(part) for part in match.groups() if part is not None)
    error = _calendar_error(year, month, day)
    if error:
        raise InvalidValue(f"{label} must be a real date; in {value!r} the {error}")
    return f"{year:04d}{month:02d}{day:02d}"


def _clock_error(hour: str | None, minute: str | None, second: str | None) -> str | None:
    if hour is not None and int(hour) > 23:
        return f"hour {hour} is not in 00-23"
    if minute is not None and int(minute) > 59:
        return f"minute {minute} is not in 00-59"
    if second is not None and int(second) > 60:  # 60 is a leap second
        return f"second {second} is not in 00-60"
    return None


_TM = re.compile(r"([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(\.[0-9]{1,6})?)?)?")
_TM_COLONS = re.compile(r"([0-9]{2}):([0-9]{2})(?::([0-9]{2})(\.[0-9]{1,6})?)?")
_TM_WANTED = (
    "a time as HHMMSS or HH:MM:SS (e.g. 143015 or 14:30:15; HH, HHMM and fractions of a "
    "second such as 143015.25 also work)"
)


def _check_tm(label: str, value: str) -> str:
    _check_characters(label, value)
    _check_ascii(label, "TM", value)
    match = _TM.fullmatch(value) or _TM_COLONS.fullmatch(value)
    if match is None:
        raise InvalidValue(f"{label} must be {_TM_WANTED}; got {value!r}")
    error = _clock_error(match[1], match[2], match[3])
    if error:
        raise InvalidValue(f"{label} must be a real time; in {value!r} the {error}")
    return "".join(part for part in match.groups() if part is not None)


_DT = re.compile(
    r"([0-9]{4})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})"
    r"(?:([0-9]{2})(\.[0-9]{1,6})?)?)?)?)?)?(?:([+-])([0-9]{2})([0-9]{2}))?"
)
_DT_WANTED = (
    "a date-time as YYYYMMDDHHMMSS.FFFFFF&ZZXX, where parts may be left off from the right and "
    "&ZZXX is an optional offset from UTC (e.g. 20240131143015, 202401311430 or "
    "20240131143015.25+0100)"
)


def _check_dt(label: str, value: str) -> str:
    _check_characters(label, value)
    _check_ascii(label, "DT", value)
    match = _DT.fullmatch(value)
    if match is None:
        raise InvalidValue(f"{label} must be {_DT_WANTED}; got {value!r}")
    year, month, day = match[1], match[2], match[3]
    error = _calendar_error(int(year), int(month or 1), None if day is None else int(day))
    error = error or _clock_error(match[4], match[5], match[6])
    if error is None and match[8]:
        offset = (int(match[9]) * 60 + int(match[10])) * (-1 if match[8] == "-" else 1)
        if int(match[10]) > 59 or not -12 * 60 <= offset <= 14 * 60:
            error = f"UTC offset {match[8]}{match[9]}{match[10]} is not in -1200 to +1400"
    if error:
        raise InvalidValue(f"{label} must be a real date-time; in {value!r} the {error}")
    return value


def _check_pn(label: str, value: str) -> str:
    _check_characters(label, value)
    groups = value.split("=")
    example = "(e.g. Doe^John, or Yamada^Tarou=山田^太郎=やまだ^たろう)"
    if len(groups) > 3:
        raise InvalidValue(
            f"{label} has {len(groups)} name groups separated by '='; a person's name takes "
            f"at most 3 (alphabetic=ideographic=phonetic) {example}"
        )
    for group in groups:
        if group.count("^") > 4:
            raise InvalidValue(
                f"{label} has {group.count('^') + 1} parts separated by '^' in {group!r}; a name "
                f"takes at most 5 (family^given^middle^prefix^suffix) {example}"
            )
        if len(group) > 64:
            raise InvalidValue(
                f"{label} has a name group of {len(group)} characters; at most 64 fit: shorten "
                f"{group[:20]!r}..."
            )
    return value


_UR = re.compile(r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})+")


def _check_ur(label: str, value: str) -> str:
    _check_characters(label, value)
    _check_ascii(label, "UR", value)
    _check_length(label, value, MAX_LONG_LENGTH)
    if _UR.fullmatch(value) is None:
        raise InvalidValue(
            f"{label} must be a URI as RFC 3986 defines it, with spaces and other characters "
            f"percent-encoded (e.g. https://pacs.example.org/studies?id=1%202); got {value!r}"
        )
    return value


_INTEGER = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(_DECIMAL)
_INTEGER_RANGES = {
    "US": (0, 2**16 - 1),
    "SS": (-(2**15), 2**15 - 1),
    "UL": (0, 2**32 - 1),
    "SL": (-(2**31), 2**31 - 1),
}
_BINARY_SIZE = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8}


def _integer(vr: str) -> Callable[[str, str], str]:
    least, most = _INTEGER_RANGES[vr]

    def check(label: str, value: str) -> str:
        if _INTEGER.fullmatch(value) is None or not least <= int(value) <= most:
            raise InvalidValue(
                f"{label} must be a whole number from {least} to {most}; got {value!r}"
            )
        return str(int(value))

    return check


def _check_fd(label: str, value: str) -> str:
    number = float(value) if _FLOAT.fullmatch(value) else math.nan
    if not math.isfinite(number):
        raise InvalidValue(
            f"{label} must be a finite number such as 0.5, -12 or 1.5e-3; got {value!r}"
        )
    return repr(number)


def _check_fl(label: str, value: str) -> str:
    number = float(_check_fd(label, value))
    try:
        packed = struct.pack("<f", number)
    except OverflowError:
        packed = b""
    if not packed or (number and not struct.unpack("<f", packed)[0]):
        raise InvalidValue(
            f"{label} does not fit a 32-bit float (0, or from ±1.4e-45 to ±3.4e38); got {value!r}"
        )
    for digits in range(1, 10):  # the shortest text that gives the same float32
        text = f"{struct.unpack('<f', packed)[0]:.{digits}g}"
        if struct.pack("<f", float(text)) == packed:
            return repr(float(text))
    raise AssertionError("9 significant digits always identify a float32")


_VALIDATORS: dict[str, Callable[[str, str], str]] = {
    "AE": _check_ae,
    "AS": _check_as,
    "CS": _check_cs,
    "DA": _check_da,
    "DS": _check_ds,
    "DT": _check_dt,
    "IS": _check_is,
    "LO": _text(64),
    "LT": _text(10240, "\r\n\t\f"),
    "PN": _check_pn,
    "SH": _text(16),
    "ST": _text(1024, "\r\n\t\f"),
    "TM": _check_tm,
    "UC": _text(MAX_LONG_LENGTH),
    "UR": _check_ur,
    "UT": _text(MAX_LONG_LENGTH, "\r\n\t\f"),
    "US": _integer("US"),
    "SS": _integer("SS"),
    "UL": _integer("UL"),
    "SL": _integer("SL"),
    "FL": _check_fl,
    "FD": _check_fd,
}
