"""Quality filters for synthesized rows (WiNGPT-3.0's data filters): repetition, leftover format, length."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

REASONS = ("repetition", "think_format", "length_thinking", "length_response")

_CJK = re.compile(r"[\u4e00-\u9fff]")
# Think tags belong to the training format, not inside a row; quoted chain keys are the search's JSON leaking through.
_FORMAT_LEFTOVER = re.compile(r"</?think>|\"(?:CoT|action|title|content)\"\s*:", re.IGNORECASE)


@dataclass(frozen=True)
class FilterConfig:
    max_repetition: float = 0.3  # share of repeated 4-grams above which a text loops
    min_thinking_chars: int = 50
    max_thinking_chars: int = 20000
    min_response_chars: int = 10
    max_response_chars: int = 8000


def ngram_repetition(text: str, n: int = 4) -> float:
    """Share of n-grams that repeat an earlier one: character n-grams for Chinese, word n-grams otherwise."""
    chars = "".join(text.split())
    # Chinese has no spaces between words; mostly-CJK text is cut into characters, anything else into words.
    units = list(chars) if len(_CJK.findall(chars)) * 2 > len(chars) else text.lower().split()
    grams = [tuple(units[i : i + n]) for i in range(len(units) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def check_row(thinking: str, response: str, cfg: FilterConfig) -> str | None:
    """Why a row fails (one of `REASONS`, cheapest check first), or None when it passes."""
    if _FORMAT_LEFTOVER.search(thinking) or _FORMAT_LEFTOVER.search(response):
        return "think_format"
    if not cfg.min_thinking_chars <= len(thinking) <= cfg.max_thinking_chars:
        return "length_thinking"
    if not cfg.min_response_chars <= len(response) <= cfg.max_response_chars:
        return "length_response"
    if max(ngram_repetition(thinking), ngram_repetition(response)) > cfg.max_repetition:
        return "repetition"
    return None


def filter_counts(reasons: Iterable[str | None]) -> dict[str, int]:
    """Rows kept and rows dropped per reason: every known reason listed (zero included), unknown ones too."""
    counts = Counter("kept" if reason is None else reason for reason in reasons)
    return {**dict.fromkeys(("kept", *REASONS), 0), **counts}
