"""Field mappings of the generic case formats: which source columns fill which `Case` field.

`fields` (in `data`, `eval.benchmarks[]` and `synthesis`) maps a schema field to one of:

- `COLUMN`: read the column of that name (a list value is an error, as is any non-text value of a text field);
- `null`: read nothing, leave the field at its default. This keeps a file's own column of a schema field's name
  out of the schema (a `department` column of another vocabulary: the department then comes from `icd10`);
- `{column: COLUMN, join: SEP, values: {FROM: TO, ...}}`: read COLUMN (renamed); a list value is joined with SEP
  (default ", "); a text value found in `values` is replaced (e.g. `{Pulmonology: respiratory}`);
- `{template: TEXT, join: SEP, values: {...}}`: TEXT with every `{COLUMN}` replaced by that column's value (a list
  joined with SEP; numbers as written; `{{` and `}}` are literal braces), e.g.
  `question: {template: "{age} {sex}. Symptoms: {symptoms}", join: "; "}`. A template reads every column it names:
  a missing or empty one is an error naming the file, the line (or row), the field and the column.

Unmapped fields read the column of their own name. `question` and `answer` cannot be `null`; `options` (an object
of letter -> text) takes a column only.
"""

from __future__ import annotations

import dataclasses
import json
import string
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from clinical_rl.data.cases import Case
from clinical_rl.data.rows import CaseFormatError

SCHEMA_FIELDS = tuple(f.name for f in dataclasses.fields(Case))
REQUIRED_FIELDS = ("question", "answer")
_SCALARS = (str, int, float)


def template_columns(template: str) -> list[str]:
    """The columns `template` names, in order.

    Raises:
        ValueError: unbalanced braces, an empty `{}`, a format spec or conversion (`{age:3}`, `{age!r}`), or a
            template that names no column.
    """
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ValueError(f"template {template!r}: {err} (write '{{{{' and '}}}}' for literal braces)") from None
    columns = []
    for _, column, spec, conversion in parts:
        if column is None:
            continue
        if not column:
            raise ValueError(f"template {template!r}: empty '{{}}': name a column inside the braces")
        if spec or conversion:
            raise ValueError(f"template {template!r}: the placeholder of column {column!r} has a format spec or "
                             "conversion; only a plain '{column}' is supported")
        columns.append(column)
    if not columns:
        raise ValueError(f"template {template!r} names no column (write '{{column}}')")
    return columns


class FieldMapping(BaseModel):
    """A schema field read from a renamed column or composed by a template (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    column: str | None = Field(None, min_length=1, description="source column")
    template: str | None = Field(None, description="text with {column} placeholders")
    join: str = Field(", ", description="separator that joins a list value")
    values: dict[str, str] = Field(default_factory=dict, description="replace a text value found here")

    @model_validator(mode="after")
    def _check(self) -> FieldMapping:
        if (self.column is None) == (self.template is None):
            raise ValueError("give exactly one of column or template")
        if self.template is not None:
            template_columns(self.template)
        return self

    def label(self, name: str) -> str:
        """How errors call the field: `field 'question' (template '...')` or `field 'department' (column 'dept')`."""
        source = f"column {self.column!r}" if self.column is not None else f"template {self.template!r}"
        return f"field {name!r} ({source})"

    def read(self, row: Mapping[str, Any], where: str, name: str, from_text: bool = False) -> Any:
        """The field's value in `row` (None: absent, only for a column); `from_text`: a CSV row (an empty cell is
        absent; a cell that is a JSON array is a list).

        Raises:
            CaseFormatError: a template's column is missing or empty, or a value is neither text, a number nor a
                list of them; the message names `where`, the field and the column.
        """
        if self.column is not None:
            value = row.get(self.column)
            if value is None or (from_text and value == ""):
                return None
            if from_text:
                value = _csv_list(value)
            if isinstance(value, list):
                value = self._text(value, where, name, self.column, from_text)
        else:
            value = "".join(
                literal + ("" if column is None else self._text(row.get(column), where, name, column, from_text))
                for literal, column, _, _ in string.Formatter().parse(self.template or "")
            )
        return self.values.get(value, value) if isinstance(value, str) else value

    def _text(self, value: Any, where: str, name: str, column: str, from_text: bool) -> str:
        """One column's value as text: a list joined with `join`, a number as written."""
        label = f"{self.label(name)}: column {column!r}"
        if value is None or (from_text and value == ""):
            raise CaseFormatError(f"{where}: {label} missing (absent, null or empty)")
        if from_text:
            value = _csv_list(value)
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if not isinstance(item, _SCALARS) or isinstance(item, bool):
                at = f"item {i} " if isinstance(value, list) else ""
                raise CaseFormatError(f"{where}: {label} {at}must be text or a number, found {type(item).__name__}")
        return self.join.join(str(item) for item in items)


def _csv_list(cell: Any) -> Any:
    """A CSV cell that holds a JSON array as a list; any other cell as it is."""
    if isinstance(cell, str) and cell.startswith("["):
        try:
            parsed = json.loads(cell)
        except json.JSONDecodeError:
            return cell
        return parsed if isinstance(parsed, list) else cell
    return cell


FieldSpec = str | FieldMapping | None


def _message(msg: str) -> str:
    """A pydantic message without its `Value error, ` prefix (the key already says where)."""
    return msg.removeprefix("Value error, ")


def parse_fields(fields: Any) -> dict[str, FieldSpec]:
    """A validated field mapping: schema field -> column name, `None` or `FieldMapping`.

    Raises:
        ValueError: naming every problem by its key (`question.template: ...`, `diagnosis: unknown schema field`).
    """
    if not isinstance(fields, Mapping):
        raise ValueError(f"must be a mapping of schema field -> column, found {type(fields).__name__}")
    unknown = sorted(set(fields) - set(SCHEMA_FIELDS))
    problems = [f"unknown schema fields {unknown}; valid: {', '.join(SCHEMA_FIELDS)}"] if unknown else []
    parsed: dict[str, FieldSpec] = {}
    for name, spec in fields.items():
        if isinstance(spec, Mapping):
            try:
                spec = FieldMapping.model_validate(spec)
            except ValidationError as err:
                problems += [f"{'.'.join(str(p) for p in (name, *e['loc']))}: "
                             f"{'unknown key' if e['type'] == 'extra_forbidden' else _message(e['msg'])}"
                             for e in err.errors()]
                continue
        if spec is None and name in REQUIRED_FIELDS:
            problems.append(f"{name}: cannot be null, every case needs its {name}")
        elif isinstance(spec, str) and not spec:
            problems.append(f"{name}: the column name is empty")
        elif name == "options" and isinstance(spec, FieldMapping) and (spec.template or spec.values):
            problems.append("options: takes a column (an object of letter -> text), not a template or values")
        elif spec is not None and not isinstance(spec, str | FieldMapping):
            problems.append(f"{name}: expected a column name, null, {{column: ...}} or {{template: ...}}, "
                            f"found {type(spec).__name__}")
        parsed[name] = spec
    if problems:
        raise ValueError("; ".join(problems))
    return parsed


CaseFields = Annotated[dict[str, FieldSpec], BeforeValidator(parse_fields)]
