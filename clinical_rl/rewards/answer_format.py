"""Think-before-answer formats: split a response into its reasoning and its final answer, and say what is missing.

Two formats are understood: `<think>...</think>` followed by the answer (ClinicalGPT-R1, DeepSeek-R1 style) and
HuatuoGPT-o1's `## Thinking` / `## Final Response` headers. `auto` tries both.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

AnswerFormat = Literal["think", "huatuo", "auto"]
Missing = Literal["", "thinking", "answer", "both"]

_THINK = re.compile(r"^\s*<think>(?P<thinking>.*?)</think>(?P<answer>.*)$", re.DOTALL | re.IGNORECASE)
_HUATUO = re.compile(
    r"^\s*#+\s*thinking\s*\n(?P<thinking>.*?)^\s*#+\s*final\s+response\s*\n?(?P<answer>.*)$",
    re.DOTALL | re.IGNORECASE | re.MULTILINE,
)
# Phrases that introduce the diagnosis inside a longer final response; the first match wins.
_DIAGNOSIS_LEAD = re.compile(
    r"(?:final\s+diagnosis|most\s+likely\s+diagnosis|diagnosis|the\s+answer|answer)\s*(?:is|:|：)\s*"
    r"|(?:最终诊断|最可能的诊断|初步诊断|诊断|答案)\s*(?:(?:是|为)\s*[:：]?|[:：])\s*",
    re.IGNORECASE,
)
_MARKDOWN = re.compile(r"[*_`#>]+")


@dataclass(frozen=True)
class ParsedResponse:
    thinking: str | None  # None when the reasoning block is missing, unclosed or empty
    answer: str | None  # the final answer line; None when nothing follows the reasoning
    missing: Missing  # which part is missing ("" when both are there)
    fmt: str  # the format that matched: "think", "huatuo" or "none"


def parse_response(text: str, fmt: AnswerFormat = "think") -> ParsedResponse:
    """Reasoning and final answer of a response; an answer without reasoning first counts as missing thinking."""
    patterns = {"think": [("think", _THINK)], "huatuo": [("huatuo", _HUATUO)]}
    for name, pattern in patterns.get(fmt, [("think", _THINK), ("huatuo", _HUATUO)]):
        match = pattern.match(text)
        if match:
            thinking = match["thinking"].strip() or None
            answer = extract_final_answer(match["answer"])
            missing = "both" if thinking is None and answer is None else "thinking" if thinking is None else (
                "answer" if answer is None else "")
            return ParsedResponse(thinking, answer, missing, name)
    if fmt != "huatuo" and text.lstrip().lower().startswith("<think>"):  # never closed: cut off while reasoning
        return ParsedResponse(text.lstrip()[len("<think>") :].strip() or None, None, "answer", "think")
    answer = extract_final_answer(text)
    return ParsedResponse(None, answer, "both" if answer is None else "thinking", "none")


def extract_final_answer(text: str) -> str | None:
    """The diagnosis a final response states: the text after 'Diagnosis:'-like phrases, else its first line."""
    lines = [_MARKDOWN.sub("", line).strip() for line in unicodedata.normalize("NFKC", text).splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return None
    for line in lines:
        match = _DIAGNOSIS_LEAD.search(line)
        if match and line[match.end() :].strip():
            return _trim(line[match.end() :])
    return _trim(lines[0])


def _trim(answer: str) -> str | None:
    trimmed = answer.strip().rstrip("。.;；!！").strip()
    return trimmed or None


def normalize_answer(text: str) -> str:
    """Case, width (NFKC), punctuation and whitespace folded, for comparing answers.

    Only punctuation goes; symbols stay, because they carry meaning in options such as '↑ ↓ normal'.
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    kept = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in folded)
    return " ".join(kept.split())
