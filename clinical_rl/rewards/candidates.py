"""How many diagnoses an answer names: one, a list, alternatives; and whether it negates or hedges.

A policy paid for any list that contains the gold learns to list. So the verifier never pays an answer that names
several candidates: `split_candidates` finds them (separators in both languages: commas, semicolons, 、, slashes,
"or", "vs", "and", 或, 还是, 和, 及, new lines, brackets), `negated` finds answers that name a disease only to deny
it ("not X", "X ruled out", 排除X) and `hedged` any word of doubt or alternative ("possibly", "?", 待排).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

Shape = Literal["single", "list", "alternatives"]

# Alternatives ("A or B", "A vs B", "A/B") are a hedge by construction; lists (", ", "; ", " and ") may be one
# name with a qualifier ("acute appendicitis, perforated") and are judged by what their parts name.
_ALTERNATIVE = re.compile(
    r"\s+(?:and/or|or|vs\.?|versus|rather than|instead of)\s+|\s*/\s*|或者|或是|或|还是|\s+either\s+",
    re.IGNORECASE,
)
_BRACKETED = re.compile(r"[(（\[【]([^()（）\[\]【】]*)[)）\]】]")
_LIST = re.compile(r"\s*[,;，；、\n()（）\[\]【】]\s*|\s+(?:and|&|\+)\s+|(?<=[\u4e00-\u9fff])(?:以及|和|及|与)(?=[\u4e00-\u9fff])",
                   re.IGNORECASE)
_LEADING_EITHER = re.compile(r"^\s*(?:either|both)\s+", re.IGNORECASE)
# A negation counts only where it governs the whole answer: in front ("not X", 排除X) or after it ("X ruled out",
# X除外). "with no hand anomaly" or "not elsewhere classified" inside a name negates a detail, not the diagnosis.
_NEGATION = re.compile(
    r"^\s*(?:not|no|unlikely|rule\s+out|r/o|exclude[ds]?|excluding|absence\s+of|no\s+evidence\s+of)\b"
    r"|\b(?:ruled\s+out|excluded|unlikely|is\s+not|not\s+likely)\s*[.!]?\s*$"
    r"|^\s*(?:不是|不考虑|排除|否认|可排除|不支持)|(?:除外|已排除|可排除|不考虑|可能性小)\s*[。.]?\s*$",
    re.IGNORECASE,
)


_HEDGE = re.compile(
    r"\b(?:not|no|unlikely|excluded?|excluding|ruled?\s+out|possibly|maybe|perhaps|alternatively|uncertain"
    r"|unclear|versus|vs|either|differential|could|might|may|also|alternative|other|wrong|incorrect|false"
    r"|rejected|undetermined|pending)\b"
    r"|[?？⸮‽؟⁇⁈⁉❓❔]|[\u0334-\u0338]"  # question marks of every script; strike-through overlays
    r"|排除|不是|不考虑|除外|否认|可能性小|待排|待除外|待定|鉴别|或|也可能|亦可能|不能确定|不能肯定|并非|不确定",
    re.IGNORECASE,
)

@dataclass(frozen=True)
class Candidates:
    """The parts of an answer (stripped, non-empty, in order; bracketed parts last) and how they were joined."""

    parts: tuple[str, ...]
    shape: Shape
    bracketed: tuple[str, ...] = ()  # the parts that stood in brackets: a second name, or a qualifier


def split_candidates(answer: str) -> Candidates:
    """Split `answer` on alternative markers first, then on list separators (see the module docstring)."""
    text = _LEADING_EITHER.sub("", unicodedata.normalize("NFKC", answer).strip())
    bracketed = tuple(p.strip() for p in _BRACKETED.findall(text) if _has_content(p))
    outside = _BRACKETED.sub(" , ", text)
    alternatives = [p.strip() for p in _ALTERNATIVE.split(outside) if _has_content(p)]
    if len(alternatives) > 1:
        return Candidates((*alternatives, *bracketed), "alternatives", bracketed)
    parts = [p.strip() for p in _LIST.split(outside) if _has_content(p)]
    every = (*parts, *bracketed) or (text,)
    return Candidates(every, "list" if len(every) > 1 else "single", bracketed)


def negated(answer: str) -> bool:
    """True when the answer denies or excludes rather than states (`not X`, `X ruled out`, `排除X`)."""
    return bool(_NEGATION.search(unicodedata.normalize("NFKC", answer)))


def hedged(answer: str) -> bool:
    """True when the answer carries a word of doubt, denial or alternative anywhere ("possibly", "?", "not", 待排):
    such an answer is never paid by the rules (a judge may still read "with no hand anomaly" as a detail)."""
    return bool(_HEDGE.search(unicodedata.normalize("NFKC", answer)))


def _has_content(part: str) -> bool:
    return any(ch.isalnum() for ch in part)
