"""Reward shaping: ClinicalGPT-R1's outcome values, WiNGPT-3.0's cosine length penalty and its rollout filters.

WiNGPT-3.0's technical report filters rollouts that repeat themselves or break the think-then-answer structure.
Here those filters are soft: `RepetitionPenalty` (after the n-gram repetition penalty of Yeo et al. 2025,
"Demystifying Long Chain-of-Thought Reasoning in LLMs") and `ThinkFormatCheck` subtract from the reward of a
response whose format is otherwise ok, so the policy still gets a gradient from the sample instead of losing it.
How `ClinicalReward` sums and floors the terms is in `clinical_rl.rewards.clinical`.
"""

from __future__ import annotations

import math
import re
import unicodedata

from pydantic import BaseModel, ConfigDict, Field, model_validator

from clinical_rl.rewards.answer_format import ParsedResponse, strip_think_tags, think_tag_counts


class OutcomeValues(BaseModel):
    """1 correct, 0.1 wrong, 0 when the answer does not follow a reasoning block (the paper's values)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    correct: float = 1.0
    wrong: float = 0.1
    no_think: float = 0.0


class LengthPenalty(BaseModel):
    """No penalty up to `start` tokens, rising along a half cosine to `max_penalty` at `end` and beyond."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    start: int = Field(1024, ge=0, description="response length (tokens) where the penalty begins")
    end: int = Field(4096, gt=0, description="length where it reaches max_penalty")
    max_penalty: float = Field(0.5, ge=0.0, description="largest amount subtracted from the reward")

    @model_validator(mode="after")
    def _check(self) -> LengthPenalty:
        if self.end <= self.start:
            raise ValueError(f"length_penalty.end={self.end} must exceed length_penalty.start={self.start}")
        return self

    def __call__(self, length: int) -> float:
        progress = min(1.0, max(0.0, (length - self.start) / (self.end - self.start)))
        return self.max_penalty * (1.0 - math.cos(math.pi * progress)) / 2.0


# ---------------------------------------------------------------------------------------------------------------
# n-gram repetition

# Han ideographs (with extension A and the compatibility block) and Japanese kana: scripts written without spaces.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# One token per CJK character, else a run of other word characters (letters, digits); punctuation is dropped.
_WORD_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")


def word_tokens(text: str) -> list[str]:
    """The word tokens of `text` for repetition statistics: each CJK character, and each other word.

    Why this split: whitespace words fail on Chinese (a whole unspaced sentence would be one token, so nothing
    ever repeats), and characters fail on English (letter trigrams such as "the" recur in any text, so everything
    looks repetitive). A Chinese character is roughly a word-sized unit of meaning, so the two halves agree in
    scale and mixed text ("患者CRP升高") works. The policy's own tokens are not used: they are not on the reward's
    side of the interface (only their count is) and would tie the metric to one tokenizer. Case and width
    (NFKC) are folded so that "Pain" and "pain" repeat; `<think>` tags are markup, not words, and are skipped.
    """
    folded = unicodedata.normalize("NFKC", strip_think_tags(text)).casefold()
    return _WORD_TOKEN.findall(folded)


def repeated_ngram_frac(tokens: list[str], n: int) -> float:
    """Fraction (0..1) of the n-grams of `tokens` that repeat an earlier one: 1 - distinct / total.

    "a b c a b c" with n=3 has the trigrams abc, bca, cab, abc: 4 in all, 3 distinct, 0.25. With fewer than n
    tokens there is no n-gram and nothing repeats: 0.
    """
    total = len(tokens) - n + 1
    if total <= 0:
        return 0.0
    distinct = len(set(zip(*(tokens[i:] for i in range(n)))))
    return 1.0 - distinct / total


class RepetitionPenalty(BaseModel):
    """Penalty for a response that repeats its own word n-grams (a degenerate loop, padded reasoning).

    Sequence-level form of the n-gram repetition penalty of Yeo et al. 2025 ("Demystifying Long Chain-of-Thought
    Reasoning in LLMs"), standing in for WiNGPT-3.0's filter of repetitive rollouts. With f the repeated n-gram
    fraction of the whole response (`repeated_ngram_frac` over `word_tokens`, reasoning and answer together):

        penalty = max_penalty * clip((f - threshold) / (1 - threshold), 0, 1)

    nothing at or below `threshold` (ordinary prose repeats some phrases), rising linearly to `max_penalty` as f
    approaches 1 (one phrase over and over). The defaults are a starting point, not values from either paper.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    n: int = Field(3, ge=1, description="n-gram length (word tokens: a CJK character or another word)")
    threshold: float = Field(0.3, ge=0.0, lt=1.0, description="repeated n-gram fraction below which nothing is "
                             "subtracted (a fraction, 0 <= threshold < 1)")
    max_penalty: float = Field(0.5, ge=0.0, description="amount subtracted from the reward at fraction 1")

    def frac(self, response: str) -> float:
        """The repeated n-gram fraction of a response (0..1)."""
        return repeated_ngram_frac(word_tokens(response), self.n)

    def __call__(self, frac: float) -> float:
        """The amount subtracted for a repeated n-gram fraction `frac`."""
        return self.max_penalty * min(1.0, max(0.0, (frac - self.threshold) / (1.0 - self.threshold)))


# ---------------------------------------------------------------------------------------------------------------
# think-block structure

# Which rule fired: stable strings, reported as the string detail `think_format_reason` and tested.
MULTIPLE_OPENS = "more than one <think>"
MULTIPLE_CLOSES = "more than one </think>"
SHORT_REASONING = "reasoning shorter than min_think_chars"


class ThinkFormatCheck(BaseModel):
    """A fixed penalty for a think structure the parser can read but that is malformed (WiNGPT-3.0's format filter).

    Only responses whose format is ok are checked: the format rule already gives `no_think` for text before
    `<think>`, an unclosed block, a `<think>` reopened after the answer, an empty block and a missing answer. What
    it lets through, and this check penalises (`penalty` once, however many rules fire):

    - more than one `<think>` (the chat template's opener counts as one) or more than one `</think>`: the reasoning
      was split into several blocks or has stray tags, e.g. an answer written between two blocks;
    - a reasoning block with fewer than `min_think_chars` characters (whitespace and tags not counted): a token
      block such as `<think>ok</think>` that satisfies the format without reasoning.

    The tag rules apply to the think format; under HuatuoGPT-o1 headers only the length rule applies.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    penalty: float = Field(0.1, ge=0.0, description="amount subtracted from the reward when any rule fires")
    min_think_chars: int = Field(20, ge=0, description="shortest reasoning accepted, in characters without "
                                 "whitespace (0: no length rule)")

    def violations(self, response: str, parsed: ParsedResponse, think_opened: bool) -> str:
        """Which rules a format-ok response breaks, joined by "; " ("" when none)."""
        fired = []
        if parsed.fmt == "think":
            opens, closes = think_tag_counts(response)
            if opens + int(think_opened) > 1:
                fired.append(MULTIPLE_OPENS)
            if closes > 1:
                fired.append(MULTIPLE_CLOSES)
        reasoning_chars = len("".join(strip_think_tags(parsed.thinking or "").split()))
        if reasoning_chars < self.min_think_chars:
            fired.append(SHORT_REASONING)
        return "; ".join(fired)
