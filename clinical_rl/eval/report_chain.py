"""The report's section of a chain benchmark (`eval.benchmarks[].env`): beside each accuracy, what the episodes
ordered and what it cost, per case, overall and per department; the models of one group in adjacent rows, so that
they read side by side without a column per model and metric."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from clinical_rl.eval.records import ChainMeans, GroupRow
from clinical_rl.eval.report_base import MISSING, department_label, format_accuracy, md_table

CHAIN_HEADER = ("group", "model", "n", "accuracy", "exams/case", "cost/case", "info requests/case",
                "useless requests/case", "turns/case", "ended by max turns")
CHAIN_NOTE = (
    "Per case, over the episodes played to their end (failed requests left out; they count as errors beside the "
    "accuracy): examinations ordered (billed whether or not the record had them), their cost in the environment's "
    "units, requests the record answered, useless requests (not performed, unknown, repeated or refused), model "
    "replies, and the share of episodes that ran out of turns instead of answering.")


def _mean(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else MISSING


def _means(chain: ChainMeans) -> list[str]:
    """The metric cells of one row, in `CHAIN_HEADER` order after the accuracy."""
    share = f"{100 * chain.max_turns_frac:.1f}%" if math.isfinite(chain.max_turns_frac) else MISSING
    return [*map(_mean, (chain.exams, chain.cost, chain.info_requests, chain.useless_requests, chain.turns)), share]


def chain_lines(index: Mapping[tuple[str, str, str, str], GroupRow], benchmark: str, models: Sequence[str],
                departments: Sequence[str]) -> list[str]:
    """The "Diagnostic chain" section of `benchmark` (Markdown lines, starting with a blank one): overall, then
    each department, one row per model with its n, accuracy (as the other tables) and `ChainMeans`. No lines when
    the benchmark's rows carry no `chain` (a one-turn benchmark)."""
    groups = [("overall", "all", "Overall"), *(("department", d, department_label(d)) for d in departments)]
    body = []
    for kind, group, label in groups:
        for model in models:
            row = index.get((benchmark, model, kind, group))
            if row is not None and row.chain is not None:
                body.append([label, model, row.accuracy.n, format_accuracy(row), *_means(row.chain)])
    if not body:
        return []
    return ["", "### Diagnostic chain", "", CHAIN_NOTE, "",
            *md_table(CHAIN_HEADER, body, ["l", "l", *("r" for _ in CHAIN_HEADER[2:])])]
