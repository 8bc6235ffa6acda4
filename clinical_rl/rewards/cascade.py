"""The verifier cascade: rule verifier first, the LLM judge only for what the rules leave undecided, both cached.

The cache is keyed by the case- and width-folded answer (punctuation kept) and the case's reference (and options, for MCQ), so a repeated answer
in a GRPO group or a later epoch costs nothing.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace

from clinical_rl.data.cases import Case
from clinical_rl.rewards.judge import LLMJudge
from clinical_rl.rewards.name_forms import fold
from clinical_rl.rewards.rule_verifier import RuleVerifier, Verdict


@dataclass(frozen=True)
class Decision:
    verdict: Verdict  # "undecided" only without a judge, or with an error
    path: str  # "rule:<rule>" or "judge"
    p_true: float | None = None  # the judge's P(True), when it gave logprobs
    cache_hit: bool = False
    latency_s: float = 0.0
    error: str | None = None  # the judge failed (transport, timeout, unreadable reply)


class CascadeVerifier:
    """`verify([(answer, case), ...]) -> [Decision, ...]`, in order."""

    def __init__(self, rule: RuleVerifier, judge: LLMJudge | None = None, cache_size: int = 100_000) -> None:
        self.rule, self.judge, self.cache_size = rule, judge, cache_size
        self._cache: OrderedDict[tuple, Decision] = OrderedDict()
        self._lock = threading.Lock()  # the reward actor may run an overdue call and its retry at once

    def verify(self, items: Sequence[tuple[str, Case]]) -> list[Decision]:
        start = time.perf_counter()
        decisions: list[Decision | None] = [None] * len(items)
        undecided: list[int] = []
        for i, (answer, case) in enumerate(items):
            cached = self._lookup(answer, case)
            if cached is not None:
                decisions[i] = replace(cached, cache_hit=True, latency_s=time.perf_counter() - start)
                continue
            judgement = self.rule.verify(answer, case)
            decisions[i] = Decision(judgement.verdict, f"rule:{judgement.rule}",
                                    latency_s=time.perf_counter() - start)
            if judgement.verdict != "undecided":
                self._store(answer, case, decisions[i])
            elif self.judge is not None:
                undecided.append(i)
        if undecided and self.judge is not None:
            queries = [(items[i][0], _reference_text(items[i][1]), items[i][1].language) for i in undecided]
            for i, verdict in zip(undecided, self.judge.judge(queries)):
                latency = time.perf_counter() - start
                if isinstance(verdict, Exception):
                    decisions[i] = Decision("undecided", "judge", latency_s=latency,
                                            error=f"judge request failed: {type(verdict).__name__}: {verdict}")
                elif verdict.correct is None:
                    decisions[i] = Decision("undecided", "judge", latency_s=latency,
                                            error=f"judge reply unreadable: {verdict.reply[:80]!r}")
                else:
                    decisions[i] = Decision("correct" if verdict.correct else "incorrect", "judge",
                                            p_true=verdict.p_true, latency_s=latency)
                    self._store(*items[i], decisions[i])
        return decisions  # type: ignore[return-value]

    def _key(self, answer: str, case: Case) -> tuple:
        options = tuple(sorted(case.options.items())) if case.options else ()
        # Punctuation stays in the key: "A (B)" and "A, B" fold to one text but are judged differently.
        return fold(answer), fold(case.answer), case.answer_letter, options, case.icd10

    def _lookup(self, answer: str, case: Case) -> Decision | None:
        key = self._key(answer, case)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        return None

    def _store(self, answer: str, case: Case, decision: Decision) -> None:
        with self._lock:
            self._cache[self._key(answer, case)] = decision
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)


def _reference_text(case: Case) -> str:
    """What the judge compares against: the gold option with its letter for MCQ, the diagnosis otherwise."""
    if case.options and case.answer_letter:
        return f"({case.answer_letter}) {case.options[case.answer_letter]}"
    return case.answer
