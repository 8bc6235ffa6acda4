"""Case loaders: the four shared datasets and generic JSONL / JSON / CSV / Parquet / HF-datasets files -> `list[Case]`.

Every loader returns `Case`s and fails on the first bad row with a `CaseFormatError` that names the file, where the
record is (JSONL: the physical line; JSON: the line where the record starts; CSV: the line where the record starts;
Parquet and HF datasets: the row index) and the field. Rows are skipped only by an explicit, documented rule
(CMB-Clin cases without a diagnosis question), and the count and reason of every skip is logged.

Generic formats take a field mapping `{schema_field: source_column}`; unmapped fields read the column of the same
name, and absent optional columns leave the field at its default.
"""

from __future__ import annotations

import bisect
import csv
import dataclasses
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from clinical_rl.data.cases import Case
from clinical_rl.data.generator import generate_cases
from clinical_rl.data.departments import DEPARTMENTS

log = logging.getLogger(__name__)

NAMED_FORMATS = ("huatuo_o1", "huatuo_o1_mcq", "medqa", "cmb_clin", "medrbench")
GENERIC_FORMATS = ("jsonl", "json", "csv", "parquet", "hf")
FORMATS = ("builtin", *NAMED_FORMATS, *GENERIC_FORMATS)
# the shared files (../shared/data), recognised by their exact names
SHARED_FILES = {
    "huatuo_o1_demo.json": "huatuo_o1",
    "medqa_usmle_test.jsonl": "medqa",
    "cmb_clin_zh.json": "cmb_clin",
    "medrbench_diagnosis_100.json": "medrbench",
}
EXTENSIONS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
SCHEMA_FIELDS = tuple(f.name for f in dataclasses.fields(Case))

MEDRBENCH_INSTRUCTION = "Based on the case above, what is the final diagnosis?"

Column = str | tuple[str, ...] | None  # a column, a nested path (named loaders), or None: not read
_MISSING = object()


class CaseFormatError(ValueError):
    """A data file is malformed; the message names the file, the line (or row) and the field."""


def load_cases(
    path: str | Path,
    fmt: str = "auto",
    fields: Mapping[str, str] | None = None,
    language: str | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> list[Case]:
    """Cases from `path` in format `fmt` ('auto': by the shared file's name, else by extension; a directory is `hf`).

    `fields` maps schema fields to source columns (generic formats only); `language` overrides every case's
    language; `limit` keeps the first `limit` cases in file order; `seed` seeds the built-in case generator.
    """
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown data format {fmt!r}; valid formats: auto, {', '.join(FORMATS)}")
    if fields and fmt not in GENERIC_FORMATS:
        raise ValueError(f"a field mapping applies only to the generic formats ({', '.join(GENERIC_FORMATS)}), "
                         f"not to {fmt!r}")
    if language is not None and language not in ("zh", "en"):
        raise ValueError(f"language override {language!r} is not 'zh' or 'en'")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if fmt == "builtin":
        cases = load_builtin(seed)
    else:
        file = Path(path)
        if not file.exists():
            raise FileNotFoundError(f"data.path: no such file or directory {file}")
        if fmt in NAMED_FORMATS:
            cases = _NAMED[fmt](file)
        else:
            cases = _GENERIC[fmt](file, column_map(fields))
        if not cases:
            raise CaseFormatError(f"{file}: no cases")
    if language is not None:
        cases = [dataclasses.replace(c, language=language) for c in cases]
    if limit is not None and limit < len(cases):
        log.info("%s: keeping the first %d of %d cases (limit)", path, limit, len(cases))
        cases = cases[:limit]
    return cases


def detect_format(path: str | Path) -> str:
    """The format of `path`: 'builtin', a shared file by its exact name, a directory as `hf`, else by extension."""
    if str(path) == "builtin":
        return "builtin"
    file = Path(path)
    if file.name in SHARED_FILES:
        return SHARED_FILES[file.name]
    if file.is_dir():
        return "hf"
    if file.suffix.lower() in EXTENSIONS:
        return EXTENSIONS[file.suffix.lower()]
    raise ValueError(f"cannot tell the data format of {file} from its name; set data.format to one of: "
                     f"{', '.join(FORMATS)}")


def load_builtin(seed: int = 0) -> list[Case]:
    """The embedded default dataset: one generated vignette per knowledge-base disease and language."""
    return generate_cases(seed=seed)


# ----------------------------------------------------------------------------------------------------------------
# The shared datasets


def load_huatuo_o1(file: Path) -> list[Case]:
    """HuatuoGPT-o1 demo data, open-ended (the RL format): `Open-ended Verifiable Question` -> `Ground-True Answer`."""
    columns = {"question": "Open-ended Verifiable Question", "answer": "Ground-True Answer"}
    return [_case(row, where, columns, f"{file.stem}-{i}", "en", "huatuo_o1")
            for i, (where, _, row) in enumerate(_json_records(file))]


def load_huatuo_o1_mcq(file: Path) -> list[Case]:
    """HuatuoGPT-o1 demo data as multiple choice: `question`, `options`, `answer_idx`, `answer` (the option text)."""
    columns = {"question": "question", "answer": "answer", "options": "options", "answer_letter": "answer_idx"}
    return [_case(row, where, columns, f"{file.stem}-{i}", "en", "huatuo_o1", mcq=True)
            for i, (where, _, row) in enumerate(_json_records(file))]


def load_medqa(file: Path) -> list[Case]:
    """MedQA-USMLE (medagents JSONL): `question`, `options` {A..D}, `answer_idx`, `answer`; id is `realidx`."""
    columns = {"question": "question", "answer": "answer", "options": "options", "answer_letter": "answer_idx",
               "id": "realidx"}
    return [_case(row, where, columns, f"{file.stem}-{i}", "en", "medqa", mcq=True)
            for i, (where, row) in enumerate(_jsonl_records(file))]


def load_medrbench(file: Path) -> list[Case]:
    """MedR-Bench diagnosis (a dict keyed by PMC id): `generate_case.case_summary` plus an instruction line ->
    `generate_case.diagnosis_results`; id is the PMC id. `body_category` is not used: the department stays unknown
    (no ICD-10 code), i.e. `other`."""
    columns = {"question": ("generate_case", "case_summary"), "answer": ("generate_case", "diagnosis_results")}
    cases = []
    for where, key, row in _json_records(file, top="object"):
        case = _case(row, where, columns, key, "en", "medrbench")
        cases.append(dataclasses.replace(case, question=f"{case.question.rstrip()}\n\n{MEDRBENCH_INSTRUCTION}"))
    return cases


_DIAGNOSIS_LINE = re.compile(r"^(?:[（(]\s*\d+\s*[）)]\s*)?(?:最可能的|初步)?诊断为?\s*(?:[:：]\s*(.*))?$")
_WORKUP = ("明确诊断", "协助诊断", "诊断方法", "如何诊断", "诊断标准", "对诊断")  # questions about work-up, not the disease


def load_cmb_clin(file: Path) -> list[Case]:
    """CMB-Clin (Chinese surgical cases): one case per record that has a diagnosis question.

    The rule, applied to each record:
    1. A QA pair asks for the diagnosis when the first line of its question contains 诊断 outside 鉴别诊断
       (a question only about the differential does not count), contains none of the work-up phrases
       明确诊断 / 协助诊断 / 诊断方法 / 如何诊断 / 诊断标准 / 对诊断 ("which tests confirm the diagnosis"), and does
       not name the title's disease (a general-knowledge question such as 膀胱破裂如何诊断 gives the answer away).
    2. The first such QA pair is the diagnosis question; question = `description` + "\\n\\n" + its question text.
    3. answer: if the first non-empty line of that pair's answer is a diagnosis line -- 诊断：, 诊断为：, 初步诊断：,
       最可能的诊断：, optionally numbered like （1）诊断： or (1) 诊断： -- the text after the colon, with whitespace
       runs collapsed and trailing 。；; stripped; when there is no such line or nothing follows the colon, the
       disease in the title after 案例分析-.
    4. Records without a diagnosis question are skipped, and the counts per reason are logged.
    language zh, id = the record's `id`, source "cmb_clin".
    """
    cases, skipped = [], Counter()
    for where, _, row in _json_records(file):
        if not isinstance(row, dict):
            raise CaseFormatError(f"{where}: expected a JSON object, found {type(row).__name__}")
        case_id = _get(row, "id", where, (str, int))
        title = _get(row, "title", where, str)
        description = _get(row, "description", where, str)
        pairs = _get(row, "QA_pairs", where, list)
        disease = title.rpartition("案例分析-")[2].strip() if "案例分析-" in title else None
        chosen, reason = None, "no QA question mentions 诊断"
        for j, pair in enumerate(pairs):
            if not isinstance(pair, dict):
                raise CaseFormatError(f"{where}: field 'QA_pairs[{j}]' must be an object, found {type(pair).__name__}")
            question = _get(pair, "question", where, str, name=f"QA_pairs[{j}].question")
            _get(pair, "answer", where, str, name=f"QA_pairs[{j}].answer")
            first = question.strip().split("\n")[0]
            if "诊断" not in first:
                continue
            if "诊断" not in first.replace("鉴别诊断", ""):
                reason = "only differential-diagnosis (鉴别诊断) questions" if reason.startswith("no") else reason
            elif any(w in first for w in _WORKUP) or (disease and disease in first):
                reason = "only work-up or general-knowledge diagnosis questions"
            else:
                chosen = pair
                break
        if chosen is None:
            skipped[reason] += 1
            continue
        answer = _diagnosis_from_answer(chosen["answer"]) or disease
        if not answer:
            raise CaseFormatError(f"{where}: field 'title' has no disease after 案例分析- and the diagnosis answer "
                                  "has no 诊断： line")
        text = f"{description.strip()}\n\n{chosen['question'].strip()}"
        cases.append(_make(where, question=text, answer=answer, id=str(case_id), language="zh", source="cmb_clin"))
    if skipped:
        log.warning("%s: skipped %d of %d cases without a diagnosis question: %s", file, sum(skipped.values()),
                    sum(skipped.values()) + len(cases), "; ".join(f"{n} {r}" for r, n in skipped.items()))
    return cases


def _diagnosis_from_answer(answer: str) -> str | None:
    first = next((line.strip() for line in answer.split("\n") if line.strip()), "")
    match = _DIAGNOSIS_LINE.match(first)
    if not match or not match.group(1):
        return None
    text = re.sub(r"\s+", " ", match.group(1)).strip().rstrip("。；;. ")
    return text or None


def _get(row: dict, key: str, where: str, types: type | tuple[type, ...], name: str | None = None) -> Any:
    if key not in row:
        raise CaseFormatError(f"{where}: field {name or key!r} missing")
    value = row[key]
    if not isinstance(value, types) or isinstance(value, bool):
        raise CaseFormatError(f"{where}: field {name or key!r} must be {_type_names(types)}, "
                              f"found {type(value).__name__}")
    return value


def _type_names(types: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))


# ----------------------------------------------------------------------------------------------------------------
# Generic formats


def column_map(fields: Mapping[str, str] | None) -> dict[str, Column]:
    """Identity mapping over the schema fields, updated by `fields`; unknown schema fields are an error."""
    fields = dict(fields or {})
    unknown = sorted(set(fields) - set(SCHEMA_FIELDS))
    if unknown:
        raise ValueError(f"field mapping names unknown schema fields {unknown}; valid: {', '.join(SCHEMA_FIELDS)}")
    for key, column in fields.items():
        if not isinstance(column, str) or not column:
            raise ValueError(f"field mapping {key!r}: the source column must be a non-empty string, got {column!r}")
    return {name: fields.get(name, name) for name in SCHEMA_FIELDS}


def load_jsonl(file: Path, columns: dict[str, Column]) -> list[Case]:
    """One JSON object per line; blank lines are not records. A missing id is `<stem>-<record index>`."""
    return [_case(row, where, columns, f"{file.stem}-{i}", "en", file.name)
            for i, (where, row) in enumerate(_jsonl_records(file))]


def load_json(file: Path, columns: dict[str, Column]) -> list[Case]:
    """A JSON array of objects, or an object of objects (the key is the default id)."""
    return [_case(row, where, columns, key if key is not None else f"{file.stem}-{i}", "en", file.name)
            for i, (where, key, row) in enumerate(_json_records(file, top="any"))]


def load_csv(file: Path, columns: dict[str, Column]) -> list[Case]:
    """A CSV file with a header row; empty cells are absent values; `options` is a JSON object string."""
    return [_case(row, where, columns, f"{file.stem}-{i}", "en", file.name, from_text=True)
            for i, (where, row) in enumerate(_csv_records(file))]


def load_parquet(file: Path, columns: dict[str, Column]) -> list[Case]:
    """A Parquet file read with pyarrow; errors name the row index."""
    import pyarrow.parquet as pq

    rows = pq.read_table(file).to_pylist()
    return [_case(row, f"{file}: row {i}", columns, f"{file.stem}-{i}", "en", file.name)
            for i, row in enumerate(rows)]


def load_hf(path: Path, columns: dict[str, Column]) -> list[Case]:
    """A HuggingFace `datasets` directory written by `save_to_disk`, or a local JSON/JSONL/CSV/Parquet file read with
    `datasets.load_dataset` (packaged builders only; nothing is downloaded). Errors name the row index."""
    import datasets

    if path.is_dir():
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if len(ds) != 1:
                raise CaseFormatError(f"{path}: a DatasetDict with splits {sorted(ds)}; point data.path at one "
                                      "split's subdirectory")
            ds = next(iter(ds.values()))
    else:
        builder = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(path.suffix.lower())
        if builder is None:
            raise CaseFormatError(f"{path}: format 'hf' reads a save_to_disk directory or a .jsonl, .json, .csv or "
                                  ".parquet file")
        try:
            ds = datasets.load_dataset(builder, data_files=str(path), split="train")
        except datasets.exceptions.DatasetGenerationError as err:
            raise CaseFormatError(f"{path}: datasets could not read it: {err.__cause__ or err}") from err
    stem = path.name if path.is_dir() else path.stem
    return [_case(row, f"{path}: row {i}", columns, f"{stem}-{i}", "en", path.name) for i, row in enumerate(ds)]


# ----------------------------------------------------------------------------------------------------------------
# Records with their locations


def _jsonl_records(file: Path) -> Iterator[tuple[str, Any]]:
    with file.open(encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise CaseFormatError(f"{file}:{lineno}: invalid JSON ({err.msg} at column {err.colno})") from None
            yield f"{file}:{lineno}", row


def _json_records(file: Path, top: str = "array") -> list[tuple[str, str | None, Any]]:
    """(`file:line` where the record starts, its key for an object of records, the record) for every record.

    The file is validated with `json.loads` (so invalid JSON names its line), then walked record by record with
    `JSONDecoder.raw_decode`, whose end offsets give where each next record starts.
    """
    text = file.read_text(encoding="utf-8-sig")
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


def _case(row: Any, where: str, columns: Mapping[str, Column], default_id: str, default_language: str,
          default_source: str, mcq: bool = False, from_text: bool = False) -> Case:
    """Read the schema fields from `row` through `columns`; `mcq`: `answer` must be the gold option's text."""
    if not isinstance(row, dict):
        raise CaseFormatError(f"{where}: expected a JSON object, found {type(row).__name__}")

    def read(name: str) -> tuple[Any, str]:
        column = columns.get(name)
        if column is None:
            return _MISSING, f"field {name!r}"
        path = column if isinstance(column, tuple) else (column,)
        label = f"field {name!r}" if path == (name,) else f"field {name!r} (column {'.'.join(path)!r})"
        value: Any = row
        for part in path:
            if not isinstance(value, dict) or part not in value:
                return _MISSING, label
            value = value[part]
        if from_text and value == "":
            return _MISSING, label  # an empty CSV cell is an absent value
        return value, label

    def text(name: str, required: bool = False) -> str | None:
        value, label = read(name)
        if value is _MISSING or value is None:
            if required:
                raise CaseFormatError(f"{where}: {label} missing")
            return None
        if not isinstance(value, str):
            raise CaseFormatError(f"{where}: {label} must be a string, found {type(value).__name__}")
        if not value.strip():
            if required:
                raise CaseFormatError(f"{where}: {label} is empty")
            return None
        return value

    question, answer = text("question", required=True), text("answer", required=True)
    case_id, label = read("id")
    if case_id is _MISSING or case_id is None or case_id == "":
        case_id = default_id
    elif isinstance(case_id, int) and not isinstance(case_id, bool):
        case_id = str(case_id)
    elif not isinstance(case_id, str):
        raise CaseFormatError(f"{where}: {label} must be a string or an integer, found {type(case_id).__name__}")
    options = _options(*read("options"), where)
    letter = text("answer_letter")
    department, language = text("department"), text("language") or default_language
    if department is not None and department not in DEPARTMENTS:
        raise CaseFormatError(f"{where}: field 'department' is {department!r}, not one of {', '.join(DEPARTMENTS)}")
    if language not in ("zh", "en"):
        raise CaseFormatError(f"{where}: field 'language' is {language!r}, not 'zh' or 'en'")
    if mcq:
        for name, value in (("options", options), ("answer_letter", letter)):
            if value is None:
                raise CaseFormatError(f"{where}: {read(name)[1]} missing")
        if options.get(letter.strip()) != answer:
            raise CaseFormatError(f"{where}: {read('answer')[1]} {answer!r} is not the text of option {letter!r}")
    return _make(where, question=question, answer=answer, id=case_id, options=options,
                 answer_letter=letter.strip() if letter else None, icd10=text("icd10"),
                 department=department, language=language, source=text("source") or default_source)


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


def _make(where: str, **kwargs: Any) -> Case:
    try:
        return Case(**kwargs)
    except ValueError as err:  # the schema's own checks, e.g. answer_letter not among the options
        raise CaseFormatError(f"{where}: {err}") from None


_NAMED = {
    "huatuo_o1": load_huatuo_o1,
    "huatuo_o1_mcq": load_huatuo_o1_mcq,
    "medqa": load_medqa,
    "cmb_clin": load_cmb_clin,
    "medrbench": load_medrbench,
}
_GENERIC = {"jsonl": load_jsonl, "json": load_json, "csv": load_csv, "parquet": load_parquet, "hf": load_hf}
