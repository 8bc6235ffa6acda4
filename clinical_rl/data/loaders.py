"""Case loaders: `load_cases`, the entry point, over the shared datasets (`public_datasets`) and generic JSONL / JSON /
CSV / Parquet / HF-datasets files -> `list[Case]`.

Every loader returns `Case`s and fails on the first bad row with a `CaseFormatError` that names the file, where the
record is (JSONL: the physical line; JSON: the line where the record starts and its index or key; CSV: the line
where the record starts; Parquet and HF datasets: the row index) and the field. Rows are skipped only by an
explicit, documented rule (CMB-Clin cases without a diagnosis question), and the count and reason of every skip is
logged.

Generic formats take a field mapping (`fields.py`): `{schema_field: source_column}`, or per field `null` (not read),
`{column: ..., join: ..., values: {...}}` (a renamed column; a list joined, values replaced) or `{template: "{age}
{sex}. Symptoms: {symptoms}", join: "; "}` (text composed from columns); unmapped fields read the column of the same
name, and absent optional columns leave the field at its default.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from clinical_rl.data.cases import Case
from clinical_rl.data.fields import SCHEMA_FIELDS, FieldSpec, parse_fields
from clinical_rl.data.departments import DEPARTMENTS
from clinical_rl.data.generator import generate_cases
from clinical_rl.data.knowledge_base import load_knowledge_base
from clinical_rl.data.public_datasets import (
    load_cmb_clin,
    load_huatuo_o1,
    load_huatuo_o1_mcq,
    load_medqa,
    load_medrbench,
)
from clinical_rl.data.rows import CaseFormatError, Column, csv_records, json_records, jsonl_records, row_to_case

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


def load_cases(
    path: str | Path,
    fmt: str = "auto",
    fields: Mapping[str, FieldSpec | Mapping[str, object]] | None = None,
    language: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    *,
    departments: Sequence[str] | None = None,
    builtin_per_disease: int = 1,
) -> list[Case]:
    """Cases from `path` in format `fmt` ('auto': by the shared file's name, else by extension; a directory is `hf`).

    `fields` maps schema fields to source columns, `None`, or `FieldMapping`s or their dicts (generic formats
    only); `language` overrides every case's language (the built-in cases are generated in that language only);
    `limit` keeps the first `limit` cases in file order; `seed` seeds the built-in case generator.
    `departments` keeps only cases of those departments (`data.departments.DEPARTMENTS`; the built-in generator
    draws only their diseases); `builtin_per_disease` is the number of built-in vignettes per disease and language.

    Raises:
        ValueError: an unknown format or language, a bad field mapping, or `fields` with a named format.
        FileNotFoundError: `path` does not exist.
        CaseFormatError: a malformed record (naming the file, line or row, field and column) or no cases at all.
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"unknown data format {fmt!r}; valid formats: auto, {', '.join(FORMATS)}")
    if language is not None and language not in ("zh", "en"):
        raise ValueError(f"language override {language!r} is not 'zh' or 'en'")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    unknown = sorted(set(departments or ()) - set(DEPARTMENTS))
    if unknown:
        raise ValueError(f"unknown departments {unknown}; valid: {', '.join(DEPARTMENTS)}")
    if fmt != "builtin" and not (fmt == "auto" and str(path) == "builtin"):
        check_exists(Path(path))  # before telling the format by the name: a missing file is the first thing to fix
    if fmt == "auto":
        fmt = detect_format(path)
    if fields and fmt not in GENERIC_FORMATS:
        raise ValueError(f"a field mapping applies only to the generic formats ({', '.join(GENERIC_FORMATS)}), "
                         f"not to {fmt!r}")
    if fmt == "builtin":
        cases = load_builtin(seed, (language,) if language else ("en", "zh"), departments, builtin_per_disease)
    else:
        file = Path(path)
        if fmt in NAMED_FORMATS:
            cases = _NAMED[fmt](file)
        else:
            cases = _GENERIC[fmt](file, column_map(fields))
        if not cases:
            raise CaseFormatError(f"{file}: no cases")
    if departments:
        cases = [c for c in cases if c.department in departments]
        if not cases:
            raise CaseFormatError(f"{path}: no cases of the departments {list(departments)}")
    if language is not None:
        cases = [dataclasses.replace(c, language=language) for c in cases]
    if limit is not None and limit < len(cases):
        log.info("%s: keeping the first %d of %d cases (limit)", path, limit, len(cases))
        cases = cases[:limit]
    return cases


def check_exists(file: Path) -> None:
    """Raises FileNotFoundError naming `file`; for a relative path, also the directory it was looked for in.

    Raises:
        FileNotFoundError: `file` does not exist.
    """
    if file.exists():
        return
    where = "" if file.is_absolute() else (f" (looked in {Path.cwd()}: paths are relative to the directory the "
                                           "command runs in)")
    raise FileNotFoundError(f"data.path: no such file or directory {file}{where}")


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


def load_builtin(seed: int = 0, languages: tuple[str, ...] = ("en", "zh"), departments: Sequence[str] | None = None,
                 per_disease: int = 1) -> list[Case]:
    """The embedded default dataset: `per_disease` generated vignettes per knowledge-base disease (of
    `departments`, default all) and language."""
    diseases = [d for d in load_knowledge_base() if not departments or d.department in departments]
    return generate_cases(per_disease * len(diseases) * len(languages), seed=seed, languages=languages,
                          diseases=diseases)


# ----------------------------------------------------------------------------------------------------------------
# Generic formats


def column_map(fields: Mapping[str, FieldSpec | Mapping[str, object]] | None) -> dict[str, Column]:
    """Identity mapping over the schema fields, updated by `fields`.

    Raises:
        ValueError: `fields` is not a valid mapping (`fields.parse_fields`), naming each bad key.
    """
    try:
        parsed = parse_fields(fields or {})
    except ValueError as err:
        raise ValueError(f"field mapping: {err}") from None
    return {name: parsed.get(name, name) for name in SCHEMA_FIELDS}


def load_jsonl(file: Path, columns: dict[str, Column]) -> list[Case]:
    """One JSON object per line; blank lines are not records. A missing id is `<stem>-<record index>`."""
    return [row_to_case(row, where, columns, f"{file.stem}-{i}", "en", file.name)
            for i, (where, row) in enumerate(jsonl_records(file))]


def load_json(file: Path, columns: dict[str, Column]) -> list[Case]:
    """A JSON array of objects, or an object of objects (the key is the default id).

    Raises:
        CaseFormatError: as `rows.json_records`; an object whose values are not all objects (one case, or a
            wrapper such as {"data": [...]}), naming its keys and how to extract the list; a malformed record.
    """
    records = json_records(file, top="any")
    if records and records[0][1] is not None and not all(isinstance(row, dict) for _, _, row in records):
        raise _not_records(file, {key: row for _, key, row in records})
    return [row_to_case(row, where, columns, key if key is not None else f"{file.stem}-{i}", "en", file.name)
            for i, (where, key, row) in enumerate(records)]


def _not_records(file: Path, data: dict) -> CaseFormatError:
    """The error for a JSON object that is not an object of records: it names the keys, and for a wrapper the `jq`
    command that saves the list inside (without it the error would be about its first value, "found list")."""
    keys = ", ".join(map(repr, list(data)[:12])) + (", ..." if len(data) > 12 else "")
    lists = [key for key, value in data.items() if isinstance(value, list)]
    if lists:
        how = f"for {{{json.dumps(lists[0])}: [...]}}, save that list as the file: jq '.[{json.dumps(lists[0])}]' " \
              f"{file.name} > cases.json"
    else:
        how = "for a single case, put it in a list: [{...}]"
    return CaseFormatError(f"{file}:1: a JSON file must be a list of case objects, or an object of case objects keyed "
                           f"by id (found an object with keys: {keys}; {how})")


def load_csv(file: Path, columns: dict[str, Column]) -> list[Case]:
    """A CSV file with a header row; empty cells are absent values; `options` is a JSON object string."""
    return [row_to_case(row, where, columns, f"{file.stem}-{i}", "en", file.name, from_text=True)
            for i, (where, row) in enumerate(csv_records(file))]


def load_parquet(file: Path, columns: dict[str, Column]) -> list[Case]:
    """A Parquet file read with pyarrow; errors name the row index."""
    import pyarrow.parquet as pq

    rows = pq.read_table(file).to_pylist()
    return [row_to_case(row, f"{file}: row {i}", columns, f"{file.stem}-{i}", "en", file.name)
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
    return [row_to_case(row, f"{path}: row {i}", columns, f"{stem}-{i}", "en", path.name) for i, row in enumerate(ds)]


_NAMED = {
    "huatuo_o1": load_huatuo_o1,
    "huatuo_o1_mcq": load_huatuo_o1_mcq,
    "medqa": load_medqa,
    "cmb_clin": load_cmb_clin,
    "medrbench": load_medrbench,
}
_GENERIC = {"jsonl": load_jsonl, "json": load_json, "csv": load_csv, "parquet": load_parquet, "hf": load_hf}
