"""What evaluation produces: one `Prediction` per case and model, `GroupRow`s that summarise them, the
`Outcomes` of each model on each benchmark (how many failed, stayed undecided or gave no final answer), and the
`Provenance` a report names (which models, benchmarks, config and version)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

REPORT = "report.md"  # an evaluation's main file, written last

EvalVerdict = Literal["correct", "incorrect", "undecided", "error"]
GroupKind = Literal["overall", "department", "language"]


@dataclass(frozen=True)
class Prediction:
    """One model's answer to one case, with how it was judged (a line of predictions.jsonl)."""

    benchmark: str  # e.g. "builtin", "medqa", "cmb_clin" or a file stem
    model: str  # label of the model or checkpoint
    case_id: str
    department: str
    language: str
    icd10: str | None
    reference: str  # gold answer (option text for MCQ)
    prompt: str
    output: str  # the model's full response
    extracted: str | None  # the final answer parsed from it (None: missing)
    verdict: EvalVerdict
    path: str  # which verifier path decided: "rule:<rule>", "judge", "format", "error"
    error: str | None = None
    # Chain benchmarks only (None otherwise): the episode summary (`Episode.summary()` without the final reply,
    # which is `output`; counts as floats, cost in the environment's units, `ended_by` "answered", "max_turns" or
    # "error" when a failed request cut it short), and the whole conversation as chat messages ({role, content}).
    episode: dict[str, Any] | None = None
    conversation: list[dict[str, str]] | None = None

    @property
    def correct(self) -> bool:
        return self.verdict == "correct"

    def to_json(self) -> dict[str, Any]:
        """The JSON line; the chain fields only where set, so one-turn lines keep their layout."""
        data = asdict(self)
        return {k: v for k, v in data.items() if k not in _CHAIN_FIELDS or v is not None}


_CHAIN_FIELDS = ("episode", "conversation")


@dataclass(frozen=True)
class ChainMeans:
    """Per-case means of a group's chain episodes (`Prediction.episode`) that were played to their end: a
    failed request cut the others short, so they would understate what the model orders (they count as errors
    beside the accuracy instead). NaN means when no episode of the group was played to its end (n = 0)."""

    n: int  # episodes averaged
    exams: float  # examinations ordered (billed: performed or not)
    cost: float  # in the environment's units (physical 0, lab 1, imaging 3, procedure 5 by default)
    info_requests: float  # examinations whose results the record had
    useless_requests: float  # not performed, unknown, repeated or refused requests
    turns: float  # model replies
    max_turns_frac: float  # share of episodes that ended because the turns ran out, not by an answer


@dataclass(frozen=True)
class Estimate:
    """A proportion with its bootstrap 95% confidence interval; `low` and `high` are NaN when there is no
    interval: no outcomes, or fewer than `eval.min_interval_n` (a bootstrap of 1 case gives [x, x], which reads
    as certainty)."""

    value: float
    low: float
    high: float
    n: int

    @property
    def has_interval(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)


@dataclass(frozen=True)
class GroupRow:
    """Accuracy of one model on one benchmark for one group (overall, a department or a language), and how many
    of its predictions were errors."""

    benchmark: str
    model: str
    kind: GroupKind
    group: str  # "all" for overall, else the department or language
    accuracy: Estimate
    distinct_diagnoses: int  # distinct normalised references in the group
    distinct_icd10: int  # distinct ICD-10 codes (0 when cases carry none)
    # Predictions with verdict "error" (a failed request or judge). They count as not correct, so every place that
    # shows the accuracy shows them beside it; a default, so that rows built without predictions still construct.
    errors: int = 0
    chain: ChainMeans | None = None  # chain benchmarks: what the episodes ordered and cost (None: one-turn)

    @property
    def all_failed(self) -> bool:
        """Every prediction of the group is an error: nothing about the model was measured, so it has no
        accuracy to show (`summarize` gives it NaN value and bounds), only the count of failures."""
        return self.accuracy.n > 0 and self.errors >= self.accuracy.n


@dataclass(frozen=True)
class Outcomes:
    """How one model's answers to one benchmark ended, besides right or wrong. Errors count failed requests and
    failed judging: they score as wrong, so they must be seen."""

    benchmark: str
    model: str
    n: int  # cases
    errors: int  # verdict "error": the request or the judge failed
    undecided: int  # no rule or judge could decide
    no_answer: int  # a reply without a final answer to judge (path "format")
    answered: int  # a reply with a final answer to judge: path neither "format" nor "error" (a failed request)
    first_error: str | None  # the first error's message, for the console and the report

    @property
    def error_frac(self) -> float:
        return self.errors / self.n if self.n else 0.0

    @property
    def format_rate(self) -> float:
        """Share of the cases (failed requests included) whose reply had a final answer to judge; 0 for none."""
        return self.answered / self.n if self.n else 0.0


def count_outcomes(predictions: Iterable[Prediction]) -> list[Outcomes]:
    """One `Outcomes` per (benchmark, model), in the order they first appear."""
    groups: dict[tuple[str, str], list[Prediction]] = {}
    for p in predictions:
        groups.setdefault((p.benchmark, p.model), []).append(p)
    return [
        Outcomes(benchmark, model, len(preds), sum(p.verdict == "error" for p in preds),
                 sum(p.verdict == "undecided" for p in preds), sum(p.path == "format" for p in preds),
                 sum(p.path not in ("format", "error") for p in preds),
                 next((p.error for p in preds if p.verdict == "error"), None))
        for (benchmark, model), preds in groups.items()
    ]


@dataclass(frozen=True)
class ModelSource:
    """Where one evaluated model's answers came from: a local directory or an endpoint's model."""

    label: str
    path: str | None  # local: the resolved model directory
    base_url: str | None  # endpoint: the URL requests went to
    model: str | None  # endpoint: the model name there

    def describe(self) -> str:
        """`local /abs/dir` or `endpoint <model> at <base_url>`."""
        return f"local {self.path}" if self.path is not None else f"endpoint {self.model} at {self.base_url}"


@dataclass(frozen=True)
class BenchmarkSource:
    """One benchmark as evaluated: its name, where its cases came from ('builtin' or a resolved path), how many."""

    name: str
    path: str
    n: int


@dataclass(frozen=True)
class Provenance:
    """What a report covers, so that it can be read without the command that made it."""

    models: tuple[ModelSource, ...]
    benchmarks: tuple[BenchmarkSource, ...]
    config_hash: str  # `config_files.config_hash` of the run's resolved config
    version: str  # clinical_rl's installed version
    min_interval_n: int  # groups with fewer cases show no confidence interval
