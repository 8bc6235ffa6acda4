"""Where a text file stops being UTF-8: the line, column and byte offset of its first undecodable byte, so that a
config or data file in another encoding (Latin-1, GBK, ...) is named with its place rather than with a bare codec
error. A leading byte-order mark is allowed and skipped, as `utf-8-sig` does."""

from __future__ import annotations

from pathlib import Path

BOM = b"\xef\xbb\xbf"
RESAVE_HINT = "re-save as UTF-8 (e.g. iconv -f latin1 -t utf-8)"


class NotUtf8Error(ValueError):
    """Bytes that are not UTF-8; `line` and `column` (1-based, the column in characters) and `offset` (0-based, in
    bytes from the start of the file) locate `byte`, the first one that does not decode."""

    def __init__(self, line: int, column: int, offset: int, byte: int) -> None:
        self.line, self.column, self.offset, self.byte = line, column, offset, byte
        super().__init__(f"not UTF-8 (byte 0x{byte:02x} at column {column}, byte offset {offset})")


def decode_utf8(data: bytes) -> str:
    """`data` decoded as UTF-8 without its byte-order mark.

    Raises:
        NotUtf8Error: locating the first byte that is not UTF-8.
    """
    start = len(BOM) if data.startswith(BOM) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as err:
        offset = start + err.start
        line_start = max(data.rfind(b"\n", 0, offset) + 1, start)
        column = len(data[line_start:offset].decode("utf-8")) + 1  # the line up to the bad byte is valid UTF-8
        raise NotUtf8Error(data.count(b"\n", 0, offset) + 1, column, offset, data[offset]) from None


def locate_not_utf8(path: Path) -> NotUtf8Error | None:
    """Where `path` stops being UTF-8, or None when it decodes: for readers that decode as they stream and so
    learn only an offset inside their current buffer."""
    try:
        decode_utf8(path.read_bytes())
    except NotUtf8Error as err:
        return err
    return None
