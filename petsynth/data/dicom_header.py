"""A fast reader of selected top-level DICOM header elements, for the scan of large archives.

``pydicom.dcmread`` builds a full dataset for every file: about 1 ms per file, as long as reading and
decoding the pixels themselves. Indexing an archive needs only some 30 top-level values per file and where
the pixel data starts, so :func:`read_header_fields` walks the element headers of the file's first bytes,
converts only the wanted values, skips everything else by its length (sequences of undefined length item by
item), and stops at the pixel data. It handles what archives hold almost always: files with the DICOM
preamble in implicit or explicit VR little endian (also for compressed transfer syntaxes, whose pixels are
left to pydicom). Anything else (no preamble, big endian, deflated, a malformed element) returns None and
the caller reads the file with pydicom, so the reader is a shortcut, never the only way in. Values are
converted as pydicom converts them (tested against pydicom on every file the tests have).
"""

from __future__ import annotations

import struct
from pathlib import Path

from pydicom.datadict import dictionary_VR, tag_for_keyword

#: Transfer syntaxes whose data set is little endian and not deflated: UID -> implicit VR.
LITTLE_ENDIAN_SYNTAXES: dict[str, bool] = {"1.2.840.10008.1.2": True, "1.2.840.10008.1.2.1": False}
_COMPRESSED_PREFIXES = ("1.2.840.10008.1.2.4.", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.8.")
#: Explicit VRs with a 2-byte reserved field and a 4-byte length.
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_SHORT_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN",
                        b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"})
_NUMERIC_TEXT = frozenset({"DS", "IS"})
_BINARY = {"US": "<H", "SS": "<h", "UL": "<I", "SL": "<i", "FL": "<f", "FD": "<d"}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
_FIRST_READ = 16384


class _NeedMore(Exception):
    """The element headers run past the bytes read so far."""


class HeaderFields(dict):
    """Keyword -> value of the wanted elements present in a file, readable as ``h.get(kw)`` or ``h.Keyword``
    like a pydicom dataset. Multi-valued elements are lists; DS values float, IS and binary ones int.

    Attributes:
        transfer_syntax: the file's TransferSyntaxUID.
        pixel_offset: file offset of the pixel data's value (-1 when the file has none).
        pixel_length: its length in bytes (0xFFFFFFFF when encapsulated).
    """

    transfer_syntax: str = ""
    pixel_offset: int = -1
    pixel_length: int = 0

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def wanted_tags(keywords: list[str]) -> dict[int, tuple[str, str]]:
    """Tag -> (keyword, VR) of DICOM keywords (pydicom's data dictionary)."""
    out = {}
    for kw in keywords:
        tag = tag_for_keyword(kw)
        if tag is None:
            raise ValueError(f"unknown DICOM keyword {kw!r}")
        out[int(tag)] = (kw, dictionary_VR(tag))
    return out


def _value(raw: bytes, vr: str):
    """A raw value converted as pydicom converts it: text stripped of padding and split at backslashes,
    DS -> float, IS -> int, binary numbers unpacked; one value unwrapped, none -> "" (text) or None."""
    if vr in _BINARY:
        fmt = _BINARY[vr]
        n = len(raw) // struct.calcsize(fmt)
        values = list(struct.unpack(f"<{n}{fmt[1]}", raw[: n * struct.calcsize(fmt)]))
    else:
        text = raw.decode("latin-1")
        text = text.strip(" \0") if vr in _NUMERIC_TEXT else text.rstrip(" \0")
        if vr in ("LT", "ST", "UT"):  # single-valued text: backslashes are characters
            return text
        values = text.split("\\")
        if vr in _NUMERIC_TEXT:
            values = [v.strip() for v in values]
            if values == [""]:
                return None
            values = [float(v) if vr == "DS" else int(float(v)) for v in values]
    if not values:
        return None
    return values[0] if len(values) == 1 else values


_IMPLICIT_HEADER = struct.Struct("<HHI").unpack_from
_EXPLICIT_HEADER = struct.Struct("<HH2sH").unpack_from
_LENGTH = struct.Struct("<I").unpack_from


def _element_header(buf: bytes, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
    """(tag, explicit VR or None, value length, value offset) of the element at ``pos``."""
    if pos + 8 > len(buf):
        raise _NeedMore
    if implicit:
        group, elem, length = _IMPLICIT_HEADER(buf, pos)
        return group << 16 | elem, None, length, pos + 8
    group, elem, vr, length = _EXPLICIT_HEADER(buf, pos)
    if group == 0xFFFE:  # item and delimiters: no VR in any syntax
        return group << 16 | elem, None, _LENGTH(buf, pos + 4)[0], pos + 8
    if vr in _LONG_VRS:
        if pos + 12 > len(buf):
            raise _NeedMore
        return group << 16 | elem, vr, _LENGTH(buf, pos + 8)[0], pos + 12
    if vr not in _SHORT_VRS:
        raise ValueError("not an explicit VR")
    return group << 16 | elem, vr, length, pos + 8


def _skip_undefined(buf: bytes, pos: int, implicit: bool) -> int:
    """The offset after a sequence (or item) of undefined length whose items start at ``pos``."""
    while True:
        tag, _, length, pos = _element_header(buf, pos, True)
        if tag in (_SEQUENCE_END, _ITEM_END):
            return pos
        if tag == _ITEM:
            pos = _skip_item(buf, pos, length, implicit)
        else:
            raise ValueError(f"unexpected tag {tag:08X} in a sequence")


def _skip_item(buf: bytes, pos: int, length: int, implicit: bool) -> int:
    if length != _UNDEFINED:
        return pos + length
    while True:  # the item's elements, up to its delimiter
        tag, _, length, value = _element_header(buf, pos, implicit)
        if tag == _ITEM_END:
            return value
        pos = _skip_undefined(buf, value, implicit) if length == _UNDEFINED else value + length


def _parse(buf: bytes, wanted: dict[int, tuple[str, str]], eof: bool) -> HeaderFields | None:
    """Parse ``buf`` (the file's first bytes, or all of it when ``eof``); _NeedMore when it is too short."""
    if len(buf) < 132 or buf[128:132] != b"DICM":
        return None
    out = HeaderFields()
    pos = 132
    syntax = None
    while True:  # file meta information: always explicit VR little endian
        if pos + 2 > len(buf):
            raise _NeedMore
        if struct.unpack_from("<H", buf, pos)[0] != 0x0002:
            break
        tag, vr, length, value = _element_header(buf, pos, False)
        if value + length > len(buf):
            raise _NeedMore
        if tag == 0x00020010:
            syntax = buf[value:value + length].decode("ascii", "replace").rstrip("\0 ")
        pos = value + length
    if syntax is None:
        return None
    implicit = LITTLE_ENDIAN_SYNTAXES.get(syntax)
    if implicit is None:
        if not syntax.startswith(_COMPRESSED_PREFIXES):
            return None  # big endian, deflated or unknown: pydicom's job
        implicit = False
    out.transfer_syntax = syntax
    n = len(buf)
    while pos < n or not eof:
        tag, vr, length, value = _element_header(buf, pos, implicit)
        if tag == PIXEL_DATA:
            out.pixel_offset, out.pixel_length = value, length
            return out
        if tag > PIXEL_DATA:
            break
        if length == _UNDEFINED:
            pos = _skip_undefined(buf, value, implicit)
            continue
        pos = value + length
        if tag in wanted:
            if pos > n:
                raise _NeedMore
            keyword, dict_vr = wanted[tag]
            out[keyword] = _value(buf[value:pos], dict_vr if vr is None or vr == b"UN" else vr.decode("ascii"))
    if pos > n:  # the last element runs past the end of the file
        return None
    return out


def read_header_fields(path: str | Path, wanted: dict[int, tuple[str, str]]) -> HeaderFields | None:
    """The ``wanted`` top-level elements (:func:`wanted_tags`) of a DICOM file, and where its pixel data
    starts; None when the file is not one this reader handles (then read it with pydicom).

    Raises:
        OSError: the file cannot be read.
    """
    with open(path, "rb") as fh:
        buf = fh.read(_FIRST_READ)
        eof = len(buf) < _FIRST_READ
        while True:
            try:
                return _parse(buf, wanted, eof)
            except _NeedMore:
                if eof:  # the file ends inside an element: malformed, let pydicom judge
                    return None
                want = max(len(buf), _FIRST_READ)
                more = fh.read(want)
                eof = len(more) < want
                buf += more
            except Exception:  # noqa: BLE001 - any malformation: pydicom decides what the file is
                return None
