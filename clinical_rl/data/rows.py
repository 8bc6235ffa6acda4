"""Data rows with their locations, and one row -> one `Case`: what every case loader shares.

A location is `file:line` (JSONL: the physical line; CSV: the line where the record starts), `file:line: record
[i]` or `file:line: record 'key'` (JSON: where the record starts, and which one) or `file: row i` (Parquet, HF
datasets); every `CaseFormatError` starts with it and then names the field. Text files are UTF-8, with or without
a byte-order mark, or UTF-16/32 with theirs; a file in another encoding is named with the line and column of its
first undecodable byte and the `iconv` command its bytes point to (`utf8.resave_hint`).
"""

from __future__ import annotations

import bisect
import csv
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from clinical_rl.data.cases import Case
from clinical_rl.data.departments import DEPARTMENTS
from clinical_rl.utf8 import locate_undecodable, nul_hint, text_codec


class ColumnReader(Protocol):
    """A field read by code rather than from one column (`fields.FieldMapping`: renamed columns, templates)."""

    def label(self, name: str) -> str:
        """How errors call the field `name`."""

    def read(self, row: Mapping[str, Any], where: str, name: str, from_text: bool = False) -> Any:
        """The value (None: absent); raises `CaseFormatError` naming `where`."""


# a column, a nested path (named loaders), a reader, or None: not read
Column = str | tuple[str, ...] | ColumnReader | None
_MISSING = object()
log = logging.getLogger(__name__)


class CaseFormatError(ValueError):
    """A data file is malformed; the message names the file, the line (or row) and the field."""


# ----------------------------------------------------------------------------------------------------------------
# Records with their locations

def _codec(file: Path) -> str:
    """The codec of a text data file: UTF-16/32 after their byte-order mark, else UTF-8 (`utf8.text_codec`).

    Raises:
        CaseFormatError: the file has NUL bytes and no byte-order mark (UTF-16 without one), naming the line.
    """
    with file.open("rb") as f:
        head = f.read(4096)  # enough for the byte-order mark, and for the NULs of UTF-16 without one
    hint = nul_hint(head)
    if hint:  # NULs decode as UTF-8, and would surface as baffling JSON or column errors instead
        line = head.count(b"\n", 0, head.index(0)) + 1
        raise CaseFormatError(f"{file}:{line}: {hint}")
    return text_codec(head)


def _not_utf8(file: Path) -> CaseFormatError:
    """The error for a text file that did not decode, at the line and column of its first bad byte."""
    err = locate_undecodable(file)
    if err is None:  # it decodes now: the file changed while it was read
        return CaseFormatError(f"{file}: did not decode when read, decodes now (was it being written?)")
    return CaseFormatError(f"{file}:{err.line}: not {err.encoding} (byte 0x{err.byte:02x} at column {err.column}); "
                           f"{err.hint}")


def _json_error(file: Path, lineno: int, err: json.JSONDecodeError, line: str) -> CaseFormatError:
    """Invalid JSON on line `lineno`, whose text (without its line break) is `line`; `err.colno` is in it."""
    at = "at the end of the line" if err.colno > len(line) else f"at column {err.colno}"
    return CaseFormatError(f"{file}:{lineno}: invalid JSON ({err.msg} {at})")


def jsonl_records(file: Path) -> Iterator[tuple[str, Any]]:
    """(`file:line`, the record) for every non-blank line. UTF-8, or UTF-16/32 with a byte-order mark.

    Raises:
        CaseFormatError: a line that is not JSON (naming its column), or a file that does not decode (naming the
            line and the encoding to convert from).
    """
    codec, first = _codec(file), True
    try:
        with file.open(encoding=codec) as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                # without its line break: a line cut short is then reported at its end, not at column 1 of the next
                line = line.rstrip("\r\n")
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    error = _json_error(file, lineno, err, line)
                    if first and line.lstrip().startswith("["):  # a JSON array written over many lines
                        error = CaseFormatError(f"{error}; the file looks like one JSON array, not JSON Lines (one "
                                                "object per line): a JSON array is read from a .json file")
                    raise error from None
                first = False
                yield f"{file}:{lineno}", row
    except UnicodeDecodeError:  # raised per buffer, not per line: the file is scanned again for the place
        raise _not_utf8(file) from None


def json_records(file: Path, top: str = "array") -> list[tuple[str, str | None, Any]]:
    """(`file:line: record [i]` (an array) or `file:line: record 'key'` (an object of records), the line being
    where the record starts; its key for an object of records; the record) for every record.

    The file is validated with `json.loads` (so invalid JSON names its line), then walked record by record with
    `JSONDecoder.raw_decode`, whose end offsets give where each next record starts. The record's index or key is in
    its location because records may share a line (a file written without line breaks).

    Raises:
        CaseFormatError: invalid JSON, the wrong top level (naming the object's keys), or a file that does not
            decode (naming the line and the encoding to convert from).
    """
    try:
        text = file.read_text(encoding=_codec(file))
    except UnicodeDecodeError:
        raise _not_utf8(file) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        error = _json_error(file, err.lineno, err, text.split("\n")[err.lineno - 1].rstrip("\r"))
        if err.msg == "Extra data" and err.lineno > 1:  # one object per line: JSON Lines under a .json name
            error = CaseFormatError(f"{error}; the file looks like JSON Lines (one object per line): name it .jsonl "
                                    "or set the format to jsonl")
        raise error from None
    want = {"array": list, "object": dict, "any": (list, dict)}[top]
    if not isinstance(data, want):
        names = {"array": "a list of records", "object": "an object of records",
                 "any": "a list of records or an object of records keyed by id"}[top]
        keys = ", ".join(map(repr, list(data)[:12])) if isinstance(data, dict) else ""
        found = f"an object with keys: {keys}" if isinstance(data, dict) else type(data).__name__
        raise CaseFormatError(f"{file}:1: the top level must be {names}, found {found}")
    newlines = [m.start() for m in re.finditer("\n", text)]
    line_of = lambda pos: bisect.bisect_left(newlines, pos) + 1  # noqa: E731
    decoder, space = json.JSONDecoder(), re.compile(r"[ \t\n\r]*")
    pos = space.match(text).end() + 1  # past '[' or '{'
    records = []
    for i in range(len(data)):
        pos = space.match(text, pos).end()
        if i:
            pos = space.match(text, pos + 1).end()  # past ','
        start, key = pos, None
        if isinstance(data, dict):
            key, pos = decoder.raw_decode(text, pos)
            pos = space.match(text, pos).end() + 1  # past ':'
            pos = space.match(text, pos).end()
        value, pos = decoder.raw_decode(text, pos)
        records.append((f"{file}:{line_of(start)}: record {f'[{i}]' if key is None else repr(key)}", key, value))
    return records


class _CountingLines:
    """A line iterator that counts the physical lines the csv reader has consumed."""

    def __init__(self, lines: Iterable[str]) -> None:
        self.lines, self.count = iter(lines), 0

    def __iter__(self) -> _CountingLines:
        return self

    def __next__(self) -> str:
        line = next(self.lines)
        self.count += 1
        return line


def csv_records(file: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """(`file:line` where the record starts, header -> cell) for every non-blank record. UTF-8, or UTF-16/32 with
    a byte-order mark; comma-separated, or `;`- or tab-separated when the header says so (`_delimiter`).

    Raises:
        CaseFormatError: no header, duplicate columns, a malformed record, or a file that does not decode (naming
            the line and the encoding to convert from).
    """
    try:
        yield from _csv_records(file)
    except UnicodeDecodeError:  # raised per buffer, not per record: the file is scanned again for the place
        raise _not_utf8(file) from None


def _delimiter(file: Path, codec: str) -> str:
    """',' unless the header read with commas is one column holding ';' or tabs: Excel writes ';' where the comma
    is the decimal mark, and tabs for "Unicode text". Such a header can never name both `question` and `answer`,
    so reading it with that delimiter changes only files that could not load."""
    with file.open(encoding=codec, newline="") as f:
        header = next(csv.reader(f), None)
    if not header or len(header) != 1:
        return ","
    delimiter = max((";", "\t"), key=header[0].count)
    if delimiter not in header[0]:
        return ","
    log.info("%s: the header has no commas but %s: reading it as %s-separated", file,
             "semicolons" if delimiter == ";" else "tabs", "semicolon" if delimiter == ";" else "tab")
    return delimiter


def _csv_records(file: Path) -> Iterator[tuple[str, dict[str, str]]]:
    codec = _codec(file)
    with file.open(encoding=codec, newline="") as f:
        lines = _CountingLines(f)
        reader = csv.reader(lines, delimiter=(delimiter := _delimiter(file, codec)))
        header = next(reader, None)
        if not header:
            raise CaseFormatError(f"{file}:1: no header row")
        duplicates = sorted(name for name, n in Counter(header).items() if n > 1)
        if duplicates:
            raise CaseFormatError(f"{file}:1: duplicate columns {duplicates}")
        while True:
            start = lines.count + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                raise CaseFormatError(f"{file}:{start}: invalid CSV ({err})") from None
            if not cells:
                continue  # a blank line is not a record
            if len(cells) != len(header):
                sep, how = ("a tab", "tab") if delimiter == "\t" else (repr(delimiter), repr(delimiter))
                read_as = "" if delimiter == "," else f"read as {how}-separated, as its header is; "
                raise CaseFormatError(f"{file}:{start}: {len(cells)} cells, the header has {len(header)} ({read_as}"
                                      f"a cell that holds {sep} must be in double quotes)")
            yield f"{file}:{start}", dict(zip(header, cells))


# ----------------------------------------------------------------------------------------------------------------
# One record -> one Case


class _RowReader:
    """The schema fields of one record, read through the column mapping; errors name the record and the field."""

    def __init__(self, row: dict, where: str, columns: Mapping[str, Column], from_text: bool) -> None:
        self.row, self.where, self.columns, self.from_text = row, where, columns, from_text

    def read(self, name: str) -> tuple[Any, str]:
        """(value or _MISSING, the label errors use for the field)."""
        column = self.columns.get(name)
        if column is None:
            return _MISSING, f"field {name!r}"
        if not isinstance(column, str | tuple):
            value = column.read(self.row, self.where, name, self.from_text)
            return (_MISSING if value is None else value), column.label(name)
        path = column if isinstance(column, tuple) else (column,)
        label = f"field {name!r}" if path == (name,) else f"field {name!r} (column {'.'.join(path)!r})"
        value: Any = self.row
        for part in path:
            if not isinstance(value, dict) or part not in value:
                return _MISSING, label
            value = value[part]
        if self.from_text and value == "":
            return _MISSING, label  # an empty CSV cell is an absent value
        return value, label

    def text(self, name: str, required: bool = False) -> str | None:
        """A string field; None when absent or blank, unless `required`.

        Raises:
            CaseFormatError: a value that is not a string, or a `required` one that is absent ("missing", with the
                record's columns), null ("is null") or blank ("is empty").
        """
        value, label = self.read(name)
        if value is _MISSING or value is None:
            if required:
                raise CaseFormatError(f"{self.where}: {label} {self._absence(name)}")
            return None
        if not isinstance(value, str):
            hint = " (map it as {column: ..., join: ', '} to join a list)" if isinstance(value, list) else ""
            raise CaseFormatError(f"{self.where}: {label} must be a string, found {type(value).__name__}{hint}")
        if not value.strip():
            if required:
                raise CaseFormatError(f"{self.where}: {label} is empty")
            return None
        return value

    def _absence(self, name: str) -> str:
        """Why field `name` has no value: its column holds null or an empty cell (then the mapping is right and
        the record is not), or it is missing (then the record's columns, to map one)."""
        column = self.columns.get(name)
        if not isinstance(column, str | tuple):  # a reader: a renamed column has its name in `column`
            column = getattr(column, "column", None)
        value: Any = self.row
        for part in (column,) if isinstance(column, str) else column or ():
            value = value.get(part, _MISSING) if isinstance(value, dict) else _MISSING
        if column and value is None:
            return "is null"
        if column and isinstance(value, str) and not value.strip():
            return "is empty"
        return f"missing{self._mapping_hint(name)}"

    def _mapping_hint(self, name: str) -> str:
        """For a field read under its own name: the record's columns and how to map one of them to it."""
        if self.columns.get(name) not in (name, (name,)):  # mapped to another column: the label names that one
            return ""
        near = [c for c in self.row if isinstance(c, str) and c != name and c.strip().lower() == name]
        if near:  # " answer" or "Answer": the name must match exactly
            return f" (the record has a column {near[0]!r}: rename it {name!r}, or map it with fields: {{{name}: ...}})"
        columns = ", ".join(map(str, list(self.row)[:12])) + (", ..." if len(self.row) > 12 else "")
        return f" (the record's columns: {columns}; map one with fields: {{{name}: COLUMN}})"

    def case_id(self, default_id: str) -> str:
        case_id, label = self.read("id")
        if case_id is _MISSING or case_id is None or case_id == "":
            return default_id
        if isinstance(case_id, int) and not isinstance(case_id, bool):
            return str(case_id)
        if not isinstance(case_id, str):
            raise CaseFormatError(
                f"{self.where}: {label} must be a string or an integer, found {type(case_id).__name__}")
        return case_id

    def department(self) -> str | None:
        """Matched without case: a file's "Cardiology" is `cardiology`."""
        department = self.text("department")
        if department is None:
            return None
        if department.strip().lower() not in DEPARTMENTS:
            raise CaseFormatError(
                f"{self.where}: {self.read('department')[1]} is {department!r}, not one of {', '.join(DEPARTMENTS)} "
                "(map other names with fields.department: {column: ..., values: {NAME: DEPARTMENT}}, or set it to "
                "null to derive it from icd10)")
        return department.strip().lower()


def row_to_case(row: Any, where: str, columns: Mapping[str, Column], default_id: str, default_language: str,
          default_source: str, mcq: bool = False, from_text: bool = False) -> Case:
    """Read the schema fields from `row` through `columns`; `mcq`: `answer` must be the gold option's text."""
    if not isinstance(row, dict):
        raise CaseFormatError(f"{where}: expected a JSON object, found {type(row).__name__}")
    fields = _RowReader(row, where, columns, from_text)
    question, answer = fields.text("question", required=True), fields.text("answer", required=True)
    options = _options(*fields.read("options"), where)
    letter = fields.text("answer_letter")
    language = fields.text("language") or default_language
    if language not in ("zh", "en"):
        raise CaseFormatError(f"{where}: field 'language' is {language!r}, not 'zh' or 'en'")
    if mcq:
        for name, value in (("options", options), ("answer_letter", letter)):
            if value is None:
                raise CaseFormatError(f"{where}: {fields.read(name)[1]} missing")
        if options.get(letter.strip()) != answer:
            raise CaseFormatError(
                f"{where}: {fields.read('answer')[1]} {answer!r} is not the text of option {letter!r}")
    return make_case(where, question=question, answer=answer, id=fields.case_id(default_id), options=options,
                 answer_letter=letter.strip() if letter else None, icd10=fields.text("icd10"),
                 department=fields.department(), language=language, source=fields.text("source") or default_source)


def _options(value: Any, label: str, where: str) -> dict[str, str] | None:
    """`options` as a letter -> text dict; a JSON string of an object is parsed (CSV). Null values are dropped:
    Parquet and HF struct columns pad the letters one row lacks with nulls."""
    if value is _MISSING or value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise CaseFormatError(f"{where}: {label} is not a JSON object ({err.msg})") from None
    if not isinstance(value, dict):
        raise CaseFormatError(f"{where}: {label} must be an object of letter -> text, "
                              f"found {type(value).__name__}")
    options = {}
    for letter, option in value.items():
        if option is None:
            continue
        if not isinstance(option, str):
            raise CaseFormatError(f"{where}: {label} option {letter!r} must be a string, "
                                  f"found {type(option).__name__}")
        options[str(letter)] = option
    return options or None


def make_case(where: str, **kwargs: Any) -> Case:
    """`Case(**kwargs)`; its own validation errors become a `CaseFormatError` at `where`."""
    try:
        return Case(**kwargs)
    except ValueError as err:  # the schema's own checks, e.g. answer_letter not among the options
        raise CaseFormatError(f"{where}: {err}") from None


def get_field(row: dict, key: str, where: str, types: type | tuple[type, ...], name: str | None = None) -> Any:
    """`row[key]`, which must be of `types` (not bool); `name` is how errors call the field."""
    if key not in row:
        raise CaseFormatError(f"{where}: field {name or key!r} missing")
    value = row[key]
    if not isinstance(value, types) or isinstance(value, bool):
        raise CaseFormatError(f"{where}: field {name or key!r} must be {_type_names(types)}, "
                              f"found {type(value).__name__}")
    return value


def _type_names(types: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
