"""Data rows with their locations, and one row -> one `Case`: what every case loader shares.

A location is `file:line` (JSONL: the physical line; JSON and CSV: the line where the record starts) or
`file: row i` (Parquet, HF datasets); every `CaseFormatError` starts with it and then names the field. Text files
are UTF-8, with or without a byte-order mark; a file in another encoding is named with the line and column of its
first undecodable byte.
"""

from __future__ import annotations

import bisect
import csv
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from clinical_rl.data.cases import Case
from clinical_rl.data.departments import DEPARTMENTS
from clinical_rl.utf8 import RESAVE_HINT, locate_not_utf8


class ColumnReader(Protocol):
    """A field read by code rather than from one column (`fields.FieldMapping`: renamed columns, templates)."""

    def label(self, name: str) -> str:
        """How errors call the field `name`."""

    def read(self, row: Mapping[str, Any], where: str, name: str, from_text: bool = False) -> Any:
        """The value (None: absent); raises `CaseFormatError` naming `where`."""


# a column, a nested path (named loaders), a reader, or None: not read
Column = str | tuple[str, ...] | ColumnReader | None
_MISSING = object()


class CaseFormatError(ValueError):
    """A data file is malformed; the message names the file, the line (or row) and the field."""


# ----------------------------------------------------------------------------------------------------------------
# Records with their locations


def _not_utf8(file: Path) -> CaseFormatError:
    """The error for a text file that did not decode as UTF-8, at the line and column of its first bad byte."""
    err = locate_not_utf8(file)
    if err is None:  # it decodes now: the file changed while it was read
        return CaseFormatError(f"{file}: not UTF-8 when read, UTF-8 now (was it being written?)")
    return CaseFormatError(f"{file}:{err.line}: not UTF-8 (byte 0x{err.byte:02x} at column {err.column}); "
                           f"{RESAVE_HINT}")


def jsonl_records(file: Path) -> Iterator[tuple[str, Any]]:
    """(`file:line`, the record) for every non-blank line.

    Raises:
        CaseFormatError: a line that is not JSON, or a file that is not UTF-8 (naming the line).
    """
    try:
        with file.open(encoding="utf-8-sig") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise CaseFormatError(f"{file}:{lineno}: invalid JSON ({err.msg} at column {err.colno})") from None
                yield f"{file}:{lineno}", row
    except UnicodeDecodeError:  # raised per buffer, not per line: the file is scanned again for the place
        raise _not_utf8(file) from None


def json_records(file: Path, top: str = "array") -> list[tuple[str, str | None, Any]]:
    """(`file:line` where the record starts, its key for an object of records, the record) for every record.

    The file is validated with `json.loads` (so invalid JSON names its line), then walked record by record with
    `JSONDecoder.raw_decode`, whose end offsets give where each next record starts.

    Raises:
        CaseFormatError: invalid JSON, the wrong top level, or a file that is not UTF-8 (naming the line).
    """
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise _not_utf8(file) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise CaseFormatError(f"{file}:{err.lineno}: invalid JSON ({err.msg} at column {err.colno})") from None
    want = {"array": list, "object": dict, "any": (list, dict)}[top]
    if not isinstance(data, want):
        names = {"array": "an array of records", "object": "an object of records",
                 "any": "an array or an object of records"}[top]
        raise CaseFormatError(f"{file}:1: the top level must be {names}, found {type(data).__name__}")
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
        records.append((f"{file}:{line_of(start)}", key, value))
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
    """(`file:line` where the record starts, header -> cell) for every non-blank record.

    Raises:
        CaseFormatError: no header, duplicate columns, a malformed record, or a file that is not UTF-8 (naming
            the line).
    """
    try:
        yield from _csv_records(file)
    except UnicodeDecodeError:  # raised per buffer, not per record: the file is scanned again for the place
        raise _not_utf8(file) from None


def _csv_records(file: Path) -> Iterator[tuple[str, dict[str, str]]]:
    with file.open(encoding="utf-8-sig", newline="") as f:
        lines = _CountingLines(f)
        reader = csv.reader(lines)
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
                raise CaseFormatError(f"{file}:{start}: {len(cells)} cells, the header has {len(header)}")
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
        """A string field; None when absent or blank, unless `required` (then CaseFormatError)."""
        value, label = self.read(name)
        if value is _MISSING or value is None:
            if required:
                raise CaseFormatError(f"{self.where}: {label} missing{self._mapping_hint(name)}")
            return None
        if not isinstance(value, str):
            hint = " (map it as {column: ..., join: ', '} to join a list)" if isinstance(value, list) else ""
            raise CaseFormatError(f"{self.where}: {label} must be a string, found {type(value).__name__}{hint}")
        if not value.strip():
            if required:
                raise CaseFormatError(f"{self.where}: {label} is empty")
            return None
        return value

    def _mapping_hint(self, name: str) -> str:
        """For a field read under its own name: the record's columns and how to map one of them to it."""
        if self.columns.get(name) not in (name, (name,)):  # mapped to another column: the label names that one
            return ""
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
