"""Where a text file stops decoding: the line, column and byte offset of its first undecodable byte, and a re-save
hint that matches its bytes, so that a config or data file in another encoding is named with its place and the
right `iconv` command rather than with a bare codec error.

UTF-8 may start with a byte-order mark, skipped as `utf-8-sig` does. `decode_text` (data files) also reads UTF-16
and UTF-32 that start with their byte-order mark (Excel's "Unicode text" export writes UTF-16 LE with one): the
mark says both the encoding and the byte order, so nothing is guessed. `decode_utf8` (config files) does not.
"""

from __future__ import annotations

import re
from pathlib import Path

BOM = b"\xef\xbb\xbf"
RESAVE_HINT = "re-save as UTF-8 (e.g. iconv -f latin1 -t utf-8)"  # the hint for bytes that fit no narrower guess
CP1252_HINT = ("re-save as UTF-8: bytes 0x80-0x9f that are not UTF-8 are Windows-1252 (cp1252) punctuation such as "
               "curly quotes, not Latin-1 (e.g. iconv -f cp1252 -t utf-8)")
# (mark, encoding, byte order), UTF-32 first: its little-endian mark starts with UTF-16's
WIDE_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32", "LE"), (b"\x00\x00\xfe\xff", "UTF-32", "BE"),
             (b"\xff\xfe", "UTF-16", "LE"), (b"\xfe\xff", "UTF-16", "BE"))
# undecodable bytes as `surrogateescape` writes them, 0x80-0x9f less the five cp1252 leaves undefined: a byte
# among them is cp1252 punctuation (Latin-1 has only invisible C1 controls there, which no text uses)
_CP1252_BYTES = re.compile("[\udc80\udc82-\udc8c\udc8e\udc91-\udc9c\udc9e\udc9f]")


class NotUtf8Error(ValueError):
    """Bytes that do not decode; `line` and `column` (1-based, the column in characters) and `offset` (0-based, in
    bytes from the start of the file) locate `byte`, the first one that does not decode. `encoding` is the one
    expected ('UTF-8', or 'UTF-16'/'UTF-32' after their byte-order mark); `hint` says how to re-save the file,
    matched to its bytes (`resave_hint`)."""

    def __init__(self, line: int, column: int, offset: int, byte: int, hint: str = RESAVE_HINT,
                 encoding: str = "UTF-8") -> None:
        self.line, self.column, self.offset, self.byte = line, column, offset, byte
        self.hint, self.encoding = hint, encoding
        super().__init__(f"not {encoding} (byte 0x{byte:02x} at column {column}, byte offset {offset})")


def wide_bom(data: bytes) -> tuple[str, str] | None:
    """(encoding, byte order), e.g. ('UTF-16', 'LE'), when `data` starts with a UTF-16 or UTF-32 byte-order mark."""
    for mark, encoding, order in WIDE_BOMS:
        if data.startswith(mark):
            return encoding, order
    return None


def text_codec(head: bytes) -> str:
    """The Python codec that reads a data file whose first bytes are `head`: 'utf-32' or 'utf-16' after their
    byte-order mark (those codecs read the mark and take the byte order from it), else 'utf-8-sig'."""
    wide = wide_bom(head)
    return wide[0].lower() if wide else "utf-8-sig"


def nul_hint(head: bytes) -> str | None:
    """For text without a byte-order mark that holds NUL bytes (valid UTF-8, but no data file has them): the file is
    most likely UTF-16 without its mark, the byte order told by where the NULs of ASCII characters fall."""
    if b"\x00" not in head or wide_bom(head):
        return None
    order = "le" if head[1::2].count(0) >= head[::2].count(0) else "be"  # LE puts an ASCII character's NUL second
    return (f"the file has NUL bytes, so it is likely UTF-16 ({order.upper()}) without a byte-order mark; re-save "
            f"as UTF-8 (e.g. iconv -f utf-16{order} -t utf-8)")


def resave_hint(data: bytes) -> str:
    """How to re-save `data`, bytes that are not UTF-8, as UTF-8, with the `iconv` source encoding its bytes point
    to: UTF-16/32 for a byte-order mark of theirs, cp1252 for undecodable bytes in 0x80-0x9f, else Latin-1 (whose
    conversion never fails, but turns any other encoding into wrong letters, hence the narrower guesses first)."""
    wide = wide_bom(data)
    if wide:
        encoding, order = wide
        return (f"the file is {encoding} ({order}: it starts with a {encoding} byte-order mark); re-save as UTF-8 "
                f"(e.g. iconv -f {encoding.lower()} -t utf-8)")
    if _CP1252_BYTES.search(data.decode("utf-8", "surrogateescape")):
        return CP1252_HINT
    return RESAVE_HINT


def decode_utf8(data: bytes) -> str:
    """`data` decoded as UTF-8 without its byte-order mark.

    Raises:
        NotUtf8Error: locating the first byte that is not UTF-8, with a `hint` matched to the bytes.
    """
    start = len(BOM) if data.startswith(BOM) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as err:
        raise _locate(data, start, start + err.start, "utf-8", "UTF-8", resave_hint(data)) from None


def decode_text(data: bytes) -> str:
    """`data` decoded as UTF-16 or UTF-32 when it starts with their byte-order mark, else as `decode_utf8` does;
    without the mark.

    Raises:
        NotUtf8Error: locating the first byte that does not decode in that encoding.
    """
    wide = wide_bom(data)
    if wide is None:
        return decode_utf8(data)
    encoding, order = wide
    codec, start = f"{encoding}-{order}".lower(), 4 if encoding == "UTF-32" else 2
    try:
        return data[start:].decode(codec)
    except UnicodeDecodeError as err:
        hint = f"the file starts with a {encoding} ({order}) byte-order mark; re-save it as UTF-8"
        raise _locate(data, start, start + err.start, codec, encoding, hint) from None


def _locate(data: bytes, start: int, offset: int, codec: str, encoding: str, hint: str) -> NotUtf8Error:
    """The error for `data[offset]`; the text from `start` (past the byte-order mark) up to it decodes."""
    before = data[start:offset].decode(codec)
    line_start = before.rfind("\n") + 1
    return NotUtf8Error(before.count("\n") + 1, len(before) - line_start + 1, offset, data[offset], hint, encoding)


def locate_undecodable(path: Path) -> NotUtf8Error | None:
    """Where `path` stops decoding as `decode_text` reads it, or None when it decodes: for readers that decode as
    they stream and so learn only an offset inside their current buffer."""
    try:
        decode_text(path.read_bytes())
    except NotUtf8Error as err:
        return err
    return None
