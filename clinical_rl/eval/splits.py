"""MedBench-Hard-style evaluation splits: a fixed number of cases per department, spread over as many distinct
ICD-10 codes as the department has, so rare diagnoses are represented and common ones do not crowd the split.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Literal

from clinical_rl.data.cases import Case
from clinical_rl.data.departments import DEPARTMENTS, normalize_icd10

Level = Literal["category", "subcategory"]
LEVELS: tuple[str, ...] = ("category", "subcategory")


def code_key(icd10: str | None, level: str = "category") -> str | None:
    """The code a case is grouped under: "category" -> its 3-character category (I21), "subcategory" -> the code
    as coded (normalised, e.g. I21.9). A code ICD-10 does not know is grouped by its own text (upper case, no
    spaces or dots; first 3 characters at category level). None when the case has no code."""
    if level not in LEVELS:
        raise ValueError(f"level {level!r} is not one of {', '.join(LEVELS)}")
    if icd10 is None or not icd10.strip():
        return None
    code = normalize_icd10(icd10)
    if code is None:
        code = re.sub(r"[\s.]", "", icd10.strip().upper())
    return code[:3] if level == "category" else code


def build_split(
    cases: Sequence[Case],
    per_department: int,
    *,
    seed: int = 0,
    departments: Sequence[str] | None = None,
    level: str = "category",
) -> list[Case]:
    """Up to `per_department` cases from each department, covering as many distinct ICD-10 codes as possible.

    Within a department, cases are grouped by `code_key(case.icd10, level)`. The codes are put in a random order
    and each code's cases shuffled (both seeded by `seed` and the department, so a department's pick does not
    depend on which other departments are requested); then rounds go over the codes taking one case of each code
    that has cases left, until `per_department` cases are taken or the coded cases run out. Every code, however
    rare, is thus taken before any code is taken twice. Cases without a code come last, in seeded random order.
    A department with fewer cases gives all of them.

    `departments`: which departments to take (default: every department present). The result is sorted by
    department (`DEPARTMENTS` order), then by position in `cases`; it is the same for the same inputs and seed.
    """
    if isinstance(per_department, bool) or not isinstance(per_department, int) or per_department < 1:
        raise ValueError(f"per_department must be an integer >= 1, got {per_department!r}")
    if level not in LEVELS:
        raise ValueError(f"level {level!r} is not one of {', '.join(LEVELS)}")
    if departments is not None:
        unknown = [d for d in departments if d not in DEPARTMENTS]
        if unknown:
            raise ValueError(f"unknown departments {unknown}; valid: {', '.join(DEPARTMENTS)}")
        wanted = set(departments)
    else:
        wanted = set(DEPARTMENTS)
    chosen: list[int] = []
    for dept in DEPARTMENTS:
        if dept not in wanted:
            continue
        members = [i for i, case in enumerate(cases) if case.department == dept]
        if members:
            chosen += _pick(cases, members, per_department, random.Random(f"{seed}:{dept}"), level)
    order = {dept: k for k, dept in enumerate(DEPARTMENTS)}
    chosen.sort(key=lambda i: (order[cases[i].department], i))
    return [cases[i] for i in chosen]


def _pick(cases: Sequence[Case], members: list[int], quota: int, rng: random.Random, level: str) -> list[int]:
    """Indices of up to `quota` of `members`: round-robin over the shuffled codes, uncoded cases last."""
    by_code: dict[str, list[int]] = {}
    uncoded: list[int] = []
    for i in members:
        key = code_key(cases[i].icd10, level)
        (uncoded if key is None else by_code.setdefault(key, [])).append(i)
    codes = sorted(by_code)  # a fixed order before shuffling: dict order would follow the input's order
    rng.shuffle(codes)
    queues = []
    for code in codes:
        queue = list(by_code[code])
        rng.shuffle(queue)
        queues.append(queue)
    rng.shuffle(uncoded)
    picked: list[int] = []
    depth = 0
    while len(picked) < quota and any(len(q) > depth for q in queues):
        for queue in queues:
            if len(picked) == quota:
                break
            if len(queue) > depth:
                picked.append(queue[depth])
        depth += 1
    picked += uncoded[: quota - len(picked)]
    return picked


def split_stats(cases: Sequence[Case], *, level: str = "category") -> dict[str, tuple[int, int]]:
    """department -> (number of cases, number of distinct ICD-10 codes at `level` among them), for the
    departments present, in `DEPARTMENTS` order. Cases without a code count as cases, not as codes."""
    stats: dict[str, tuple[int, int]] = {}
    for dept in DEPARTMENTS:
        members = [c for c in cases if c.department == dept]
        if members:
            codes = {code_key(c.icd10, level) for c in members} - {None}
            stats[dept] = (len(members), len(codes))
    return stats
