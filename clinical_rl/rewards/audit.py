"""Verifier audit: score hand-labelled (reference, prediction) pairs through a reward and measure the agreement.

A pairs file is JSONL, one pair per line:

    {"reference": "Community-acquired pneumonia", "prediction": "Hospital-acquired pneumonia", "label": false,
     "kind": "near_miss"}

`reference` is the gold diagnosis (MCQ: the gold option's text), `prediction` a final answer (what follows
"Diagnosis:", not a whole response), `label` whether both name the same diagnosis (JSON true/false), `kind` any
grouping string (exact, synonym, abbreviation, near_miss, list, ...). Optional: `options` ({letter: text}) with
`answer_letter` for MCQ, `icd10`, `language` (en | zh, default en). Blank lines are skipped.

Each prediction is wrapped into a minimal response (`<think>audit</think>\\nDiagnosis: <prediction>`, or the
HuatuoGPT-o1 headers when the reward's `answer_format` is huatuo) and scored by the reward's own `score`, so the
audit covers the path training pays through: answer parsing, rules, judge. Each result gets a verdict from its
`details["correct"]`, `details["undecided"]` and `details["path"]`:

    correct / incorrect   what the reward decided, by its rules or its judge (`path == "judge"`)
    undecided             the rules could not decide and no judge did (the reward applied `on_undecided`)
    failed                status error/timeout, no numeric `details["correct"]`, or `path == "format"` (no answer
                          parsed out of the wrapper, so no verifier ran)

Precision and recall are over the pairs with a verdict (correct/incorrect); undecided and failed pairs are left
out of both and counted on their own. Accuracy is over all pairs, undecided and failed ones counting as misses.
Coverage is the share of pairs the rules decided (verdict without the judge). A false positive is a pair labelled
false that the reward judged correct: the error a policy learns to exploit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from clinical_rl.config import RewardConfig
from clinical_rl.data.cases import Case
from clinical_rl.data.rows import jsonl_records
from clinical_rl.rewards.base import RewardInput, RewardResult, load_reward_class

log = logging.getLogger(__name__)

AuditVerdict = Literal["correct", "incorrect", "undecided", "failed"]
ScoreFn = Callable[[list[RewardInput]], list[RewardResult]]  # a reward's `score`, local or through the actors
AUDIT_QUESTION = "(verifier audit: no case text)"


class AuditPair(BaseModel):
    """One labelled pair: a line of a pairs file."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    reference: str = Field(min_length=1, description="gold diagnosis; MCQ: the gold option's text")
    prediction: str = Field(min_length=1, description="a final answer, as it would follow 'Diagnosis:'")
    label: bool = Field(strict=True, description="true: the prediction names the reference's diagnosis")
    kind: str = Field(min_length=1, description="report group, e.g. exact, synonym, abbreviation, near_miss, list")
    options: dict[str, str] | None = Field(None, description="MCQ: letter -> option text")
    answer_letter: str | None = Field(None, description="MCQ: the gold option's letter")
    icd10: str | None = Field(None, description="ICD-10 code of the reference")
    language: Literal["en", "zh"] = Field("en", description="language of the reference")

    @model_validator(mode="after")
    def _check(self) -> AuditPair:
        if (self.options is None) != (self.answer_letter is None):
            raise ValueError("options and answer_letter go together (MCQ)")
        if self.options is not None and self.answer_letter not in self.options:
            raise ValueError(f"answer_letter {self.answer_letter!r} is not among the options {sorted(self.options)}")
        return self

    def to_input(self, answer_format: str) -> RewardInput:
        """The pair as the reward sees a sample: a minimal response around the prediction, the pair as the case."""
        case = Case(AUDIT_QUESTION, self.reference, options=self.options, answer_letter=self.answer_letter,
                    icd10=self.icd10, language=self.language, source="verifier audit")
        # response_tokens 0: no length penalty, the audit measures correctness only
        return RewardInput(AUDIT_QUESTION, audit_response(self.prediction, answer_format), self.reference, case, 0)


def audit_response(prediction: str, answer_format: str = "think") -> str:
    """The minimal response a reward parses `prediction` from: a reasoning block, then `Diagnosis: <prediction>`."""
    if answer_format == "huatuo":
        return f"## Thinking\naudit\n## Final Response\nDiagnosis: {prediction}"
    return f"<think>audit</think>\nDiagnosis: {prediction}"


def load_pairs(path: str | Path) -> list[AuditPair]:
    """Read a pairs file; ValueError names `file:line` and the field of the first bad line (or the missing file)."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{file}: no such pairs file")
    pairs = []
    for where, record in jsonl_records(file):
        try:
            pairs.append(AuditPair.model_validate(record))
        except ValidationError as err:
            problems = [f"{'.'.join(str(p) for p in e['loc']) or '<line>'}: "
                        f"{'unknown key' if e['type'] == 'extra_forbidden' else e['msg']}" for e in err.errors()]
            raise ValueError(f"{where}: {'; '.join(problems)}") from None
    if not pairs:
        raise ValueError(f"{file}: no pairs (one JSON object per line)")
    return pairs


def answer_format_of(cfg: RewardConfig) -> str:
    """The answer format the configured reward parses (`kwargs.answer_format`, ClinicalReward's key; else think)."""
    return str(cfg.kwargs.get("answer_format", "think"))


@dataclass(frozen=True)
class ScoredPair:
    pair: AuditPair
    verdict: AuditVerdict
    by_rules: bool  # decided without the judge (counts toward coverage)
    path: str  # details["path"] (e.g. "rule:synonym", "judge"), or why the pair failed


def classify(result: RewardResult) -> tuple[AuditVerdict, bool, str]:
    """(verdict, decided by the rules, path) of one reward result, as the module docstring defines them."""
    if result.status != "ok":
        return "failed", False, f"{result.status}: {result.details.get('error', '')}"
    correct = result.details.get("correct")
    if not isinstance(correct, (int, float)):
        return "failed", False, "the reward reports no numeric details['correct']"
    undecided = bool(result.details.get("undecided", 0.0))
    path = str(result.details.get("path", ""))
    if path == "format":  # ClinicalReward did not parse an answer out of the wrapper: no verifier ran
        return "failed", False, f"format: {result.details.get('missing_reason') or 'no answer parsed'}"
    if undecided and path != "judge":
        return "undecided", False, path
    return ("correct" if correct >= 0.5 else "incorrect"), not undecided, path


@dataclass(frozen=True)
class AuditStats:
    """Counts over a group of scored pairs; the rates are None where their denominator is 0."""

    n: int
    true_pos: int
    false_pos: int
    true_neg: int
    false_neg: int
    undecided: int
    failed: int
    by_rules: int

    @staticmethod
    def of(scored: Iterable[ScoredPair]) -> AuditStats:
        rows = list(scored)

        def count(verdict: str, label: bool) -> int:
            return sum(s.verdict == verdict and s.pair.label == label for s in rows)

        return AuditStats(len(rows), count("correct", True), count("correct", False), count("incorrect", False),
                          count("incorrect", True), sum(s.verdict == "undecided" for s in rows),
                          sum(s.verdict == "failed" for s in rows), sum(s.by_rules for s in rows))

    @property
    def precision(self) -> float | None:
        """Of the pairs judged correct, the share labelled true."""
        judged = self.true_pos + self.false_pos
        return self.true_pos / judged if judged else None

    @property
    def recall(self) -> float | None:
        """Of the pairs labelled true that got a verdict, the share judged correct."""
        positives = self.true_pos + self.false_neg
        return self.true_pos / positives if positives else None

    @property
    def accuracy(self) -> float | None:
        """Share of all pairs whose verdict matches the label (undecided and failed pairs count as misses)."""
        return (self.true_pos + self.true_neg) / self.n if self.n else None

    @property
    def coverage(self) -> float | None:
        """Share of all pairs the rules decided."""
        return self.by_rules / self.n if self.n else None

    def to_json(self) -> dict[str, float | int | None]:
        return {**vars(self), "precision": self.precision, "recall": self.recall, "accuracy": self.accuracy,
                "coverage": self.coverage}


@dataclass(frozen=True)
class AuditReport:
    scored: list[ScoredPair]  # in file order

    @property
    def total(self) -> AuditStats:
        return AuditStats.of(self.scored)

    @property
    def by_kind(self) -> dict[str, AuditStats]:
        kinds = sorted({s.pair.kind for s in self.scored})
        return {kind: AuditStats.of(s for s in self.scored if s.pair.kind == kind) for kind in kinds}

    @property
    def false_positives(self) -> list[ScoredPair]:
        return [s for s in self.scored if s.verdict == "correct" and not s.pair.label]

    @property
    def failed(self) -> list[ScoredPair]:
        return [s for s in self.scored if s.verdict == "failed"]

    def metrics(self) -> dict[str, float]:
        """`audit/*` metrics of a training step (docs/metrics.md); a rate without a denominator is left out."""
        total = self.total
        out = {"audit/false_positives": float(total.false_pos), "audit/false_negatives": float(total.false_neg),
               "audit/undecided": float(total.undecided), "audit/failed": float(total.failed)}
        for name in ("accuracy", "coverage", "precision", "recall"):
            value = getattr(total, name)
            if value is not None:
                out[f"audit/{name}"] = value
        for kind, stats in self.by_kind.items():
            out[f"audit/kind/{kind}/accuracy"] = stats.accuracy or 0.0  # n >= 1 in every kind: never None
            out[f"audit/kind/{kind}/coverage"] = stats.coverage or 0.0
            out[f"audit/kind/{kind}/false_positives"] = float(stats.false_pos)
        return out

    def table(self) -> str:
        """Per-kind table, the definitions, and every false positive and failed pair."""
        header = ("kind", "n", "precision", "recall", "coverage", "accuracy", "FP", "FN", "undecided", "failed")
        rows = [(kind, stats) for kind, stats in self.by_kind.items()] + [("all", self.total)]
        width = max(len(header[0]), *(len(kind) for kind, _ in rows))
        lines = [f"{header[0]:<{width}}" + "".join(f"{h:>11}" for h in header[1:])]
        for kind, s in rows:
            cells = [s.n, _rate(s.precision), _rate(s.recall), _rate(s.coverage), _rate(s.accuracy),
                     s.false_pos, s.false_neg, s.undecided, s.failed]
            lines.append(f"{kind:<{width}}" + "".join(f"{c:>11}" for c in cells))
        lines += ["", "precision, recall: over pairs with a verdict (undecided and failed pairs counted apart); "
                  "accuracy: over all pairs (undecided, failed = miss); coverage: share the rules decided", ""]
        lines.append(f"false positives (label false, judged correct): {len(self.false_positives)}")
        lines += [f"  [{s.pair.kind}] reference {s.pair.reference!r}  prediction {s.pair.prediction!r}  ({s.path})"
                  for s in self.false_positives]
        if self.failed:
            lines.append(f"failed (no verdict): {len(self.failed)}")
            lines += [f"  [{s.pair.kind}] reference {s.pair.reference!r}  prediction {s.pair.prediction!r}  "
                      f"({s.path})" for s in self.failed]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data: totals, per kind, false positives and every scored pair."""

        def row(s: ScoredPair) -> dict[str, Any]:
            return {"reference": s.pair.reference, "prediction": s.pair.prediction, "label": s.pair.label,
                    "kind": s.pair.kind, "verdict": s.verdict, "by_rules": s.by_rules, "path": s.path}

        return {"all": self.total.to_json(), "by_kind": {k: v.to_json() for k, v in self.by_kind.items()},
                "false_positives": [row(s) for s in self.false_positives], "pairs": [row(s) for s in self.scored]}


def run_audit(pairs: list[AuditPair], score: ScoreFn, answer_format: str = "think") -> AuditReport:
    """Score every pair in one batch through `score` and classify the results (ValueError on a wrong count)."""
    results = score([p.to_input(answer_format) for p in pairs])
    if len(results) != len(pairs):
        raise ValueError(f"the reward returned {len(results)} results for {len(pairs)} audit pairs")
    return AuditReport([ScoredPair(p, *classify(r.check())) for p, r in zip(pairs, results)])


def audit_locally(cfg: RewardConfig, pairs_path: str | Path) -> AuditReport:
    """`clinical-rl verifier-audit`: the pairs file through `cfg.cls(**cfg.kwargs)` in this process, no Ray."""
    pairs = load_pairs(pairs_path)
    reward = load_reward_class(cfg.cls)(**cfg.kwargs)
    return run_audit(pairs, reward.score, answer_format_of(cfg))


def live_audit(pairs: list[AuditPair], score: ScoreFn, cfg: RewardConfig, step: int) -> dict[str, float]:
    """The training-time audit: score through the running reward, warn on every false positive and failed pair,
    return the `audit/*` metrics of the step."""
    report = run_audit(pairs, score, answer_format_of(cfg))
    if report.false_positives:
        listed = "\n".join(f"  [{s.pair.kind}] reference {s.pair.reference!r}, prediction {s.pair.prediction!r} "
                           f"({s.path})" for s in report.false_positives)
        log.warning("verifier audit at step %d: %d FALSE POSITIVE(S), the reward pays full credit for wrong "
                    "answers:\n%s", step, len(report.false_positives), listed)
    if report.failed:
        log.warning("verifier audit at step %d: %d pair(s) failed to score, e.g. %s", step, len(report.failed),
                    report.failed[0].path)
    return report.metrics()


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
