"""The ClinicalGPT-R1 outcome reward in its simplest form: 1 correct, 0.1 wrong, 0 without reasoning first.

Correctness here is an exact match of the normalised final answer with the reference; the clinical verifier
cascade (synonyms, ICD-10, LLM judge) replaces this class through `reward.cls`.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from clinical_rl.rewards.base import RewardInput, RewardResult

_ANSWER_PREFIX = re.compile(r"^\s*((final\s+)?(diagnosis|answer)|最终诊断|诊断|答案)\s*:\s*", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedResponse:
    thinking: str | None  # None when the think block is missing, unclosed or empty
    answer: str  # text after the think block (the whole text without one)


def parse_think_answer(text: str, open_tag: str = "<think>", close_tag: str = "</think>") -> ParsedResponse:
    """Split `<think>...</think> answer`; the think block must come first and be non-empty."""
    stripped = text.lstrip()
    if not stripped.startswith(open_tag) or close_tag not in stripped:
        return ParsedResponse(thinking=None, answer=text.strip())
    thinking, _, answer = stripped[len(open_tag) :].partition(close_tag)
    return ParsedResponse(thinking=thinking.strip() or None, answer=answer.strip())


def normalize_answer(text: str) -> str:
    """Case, width (NFKC), punctuation and whitespace folded; the 'Diagnosis:' prefix dropped."""
    text = unicodedata.normalize("NFKC", text).strip()  # full-width letters and colons become ASCII first
    first_line = text.splitlines()[0] if text else ""
    folded = _ANSWER_PREFIX.sub("", first_line).casefold()
    return " ".join(re.sub(r"[^\w\s]", " ", folded).split())


class ThinkAnswerReward:
    """Outcome reward against a reference string: `correct` / `wrong` / `no_think`."""

    def __init__(self, correct: float = 1.0, wrong: float = 0.1, no_think: float = 0.0) -> None:
        self.correct, self.wrong, self.no_think = correct, wrong, no_think

    def score(self, batch: list[RewardInput]) -> list[RewardResult]:
        return [self._score_one(item) for item in batch]

    def _score_one(self, item: RewardInput) -> RewardResult:
        parsed = parse_think_answer(item.response)
        if parsed.thinking is None or not parsed.answer:
            return RewardResult(self.no_think, "ok", {"format_ok": 0.0, "correct": 0.0})
        correct = normalize_answer(parsed.answer) == normalize_answer(item.reference)
        return RewardResult(self.correct if correct else self.wrong, "ok", {"format_ok": 1.0, "correct": float(correct)})
