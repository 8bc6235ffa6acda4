"""Scoring: accuracy with bootstrap confidence intervals, per-group tables, and the answer readers benchmarks need.

- `bootstrap_ci` / `summarize`: a proportion with its percentile-bootstrap interval, and the overall, per-department
  and per-language rows of every (benchmark, model).
- `mcq_letter` / `mcq_accuracy`: single-answer multiple choice (MedQA), through the rule verifier's option reader.
- `parse_letter_set` / `multi_answer_f1`: multiple-answer multiple choice, scored by micro-F1 over option letters.
- `numeric_within`: calculation questions (MedCalc-Bench style), correct when the answer's number is in a range.

Pure Python and numpy: nothing here loads a model or starts Ray.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from functools import lru_cache

import numpy as np

from clinical_rl.data.cases import Case
from clinical_rl.data.departments import DEPARTMENTS, normalize_icd10
from clinical_rl.eval.records import ChainMeans, Estimate, GroupRow, Prediction
from clinical_rl.rewards.answer_format import normalize_answer, parse_response
from clinical_rl.rewards.rule_verifier import RuleVerifier

LANGUAGES = ("en", "zh")

# ----------------------------------------------------------------------------------------------------------------
# Proportions and tables


def bootstrap_ci(
    correct: Sequence[bool], *, n_resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> Estimate:
    """The share of true values with its percentile-bootstrap confidence interval at `level`.

    Resampling n outcomes with replacement from k successes in n gives a success count distributed exactly
    Binomial(n, k/n), so each resample's mean is drawn as binomial(n, k/n) / n: the same bootstrap distribution
    as resampling indices, in O(n_resamples) time and memory. The interval is the (1-level)/2 and (1+level)/2
    quantiles of the resampled means, widened if need be to contain the observed mean. Deterministic for a seed.
    No outcomes: Estimate(nan, nan, nan, 0). All outcomes equal: the degenerate interval [mean, mean].
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    outcomes = np.asarray(list(correct), dtype=bool)
    n = int(outcomes.size)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    k = int(outcomes.sum())
    value = k / n
    if k in (0, n):
        return Estimate(value, value, value, n)
    means = np.random.default_rng(seed).binomial(n, value, size=n_resamples) / n
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return Estimate(value, min(float(low), value), max(float(high), value), n)


def summarize(predictions: Sequence[Prediction], *, min_interval_n: int, n_resamples: int = 2000,
              seed: int = 0) -> list[GroupRow]:
    """Accuracy rows for each (benchmark, model), in order of first appearance.

    `min_interval_n` (>= 1): a group of fewer cases keeps its accuracy and n but gets no interval (NaN `low`
    and `high`, see `Estimate`): a bootstrap of a handful of outcomes is degenerate (n=1 gives [x, x]) and would
    be read as a precise result. Required, so that no caller gets intervals for tiny groups by default.

    Each pair gets an overall row (group "all"), one row per department present (in `DEPARTMENTS` order; a
    department outside it would follow, sorted) and one per language present (en, zh, then any other, sorted).

    Accuracy is the share of predictions with verdict "correct" among ALL predictions of the group: "incorrect",
    "undecided" (no rule or judge could decide) and "error" (generation or judging failed) all count as not
    correct. Errors are deliberately not dropped: excluding them would reward a model for failing on its hardest
    cases (a crash or a truncated answer is a failed case for the user too) and would make rows of different
    models cover different cases. Each row carries its number of errors (`GroupRow.errors`), so that whoever
    shows the accuracy can show them beside it. A group whose predictions are ALL errors gets no accuracy (NaN
    value and bounds, its n and errors kept): 0% would claim the model was measured and got everything wrong,
    when in truth no answer was obtained (a dead endpoint, say).

    `distinct_diagnoses`: distinct normalised references (`normalize_answer`); `distinct_icd10`: distinct ICD-10
    codes after `normalize_icd10` among predictions that carry one (codes it does not know are not counted).
    Every row's interval uses the same `seed`. Rows of a chain benchmark (predictions with an `episode`) carry
    `chain_means` of their group. Raises ValueError for `min_interval_n` < 1.
    """
    if min_interval_n < 1:
        raise ValueError(f"min_interval_n must be >= 1, got {min_interval_n}")
    pairs: dict[tuple[str, str], list[Prediction]] = {}
    for p in predictions:
        pairs.setdefault((p.benchmark, p.model), []).append(p)
    rows: list[GroupRow] = []
    for (benchmark, model), preds in pairs.items():
        groups: list[tuple[str, str, list[Prediction]]] = [("overall", "all", preds)]
        departments = {p.department for p in preds}
        for dept in [*(d for d in DEPARTMENTS if d in departments), *sorted(departments - set(DEPARTMENTS))]:
            groups.append(("department", dept, [p for p in preds if p.department == dept]))
        languages = {p.language for p in preds}
        for lang in [*(x for x in LANGUAGES if x in languages), *sorted(languages - set(LANGUAGES))]:
            groups.append(("language", lang, [p for p in preds if p.language == lang]))
        for kind, group, members in groups:
            codes = {normalize_icd10(p.icd10) for p in members if p.icd10 and p.icd10.strip()}
            accuracy = bootstrap_ci([p.correct for p in members], n_resamples=n_resamples, seed=seed)
            errors = sum(p.verdict == "error" for p in members)
            if errors == accuracy.n:  # nothing measured (members is never empty, so n > 0 here)
                accuracy = Estimate(math.nan, math.nan, math.nan, accuracy.n)
            elif accuracy.n < min_interval_n:
                accuracy = replace(accuracy, low=math.nan, high=math.nan)
            rows.append(GroupRow(
                benchmark=benchmark,
                model=model,
                kind=kind,  # type: ignore[arg-type]
                group=group,
                accuracy=accuracy,
                distinct_diagnoses=len({normalize_answer(p.reference) for p in members}),
                distinct_icd10=len(codes - {None}),
                errors=errors,
                chain=chain_means(members),
            ))
    return rows


def chain_means(predictions: Sequence[Prediction]) -> ChainMeans | None:
    """`ChainMeans` of the predictions' episodes (chain benchmarks), over those played to their end (verdict not
    "error"); None when no prediction carries an episode (a one-turn benchmark)."""
    if not any(p.episode is not None for p in predictions):
        return None
    played = [p.episode for p in predictions if p.episode is not None and p.verdict != "error"]

    def mean(key: str) -> float:
        return float(np.mean([float(e[key]) for e in played])) if played else math.nan

    max_turns = float(np.mean([e.get("ended_by") == "max_turns" for e in played])) if played else math.nan
    return ChainMeans(n=len(played), exams=mean("exams_ordered"), cost=mean("cost"),
                      info_requests=mean("info_requests"), useless_requests=mean("useless_requests"),
                      turns=mean("turns"), max_turns_frac=max_turns)


# ----------------------------------------------------------------------------------------------------------------
# Final answers


def final_answer(output: str, *, think_opened: bool = False) -> str | None:
    """The final answer of a response (`parse_response` in "auto" mode): what follows the last `</think>` or
    `## Final Response`, or for a response in neither format what `extract_final_answer` reads from the whole
    text ("Diagnosis:/Answer: ..." else the first line). None when there is none -- in particular when a
    `<think>` block never closes or nothing follows it: an answer is not fished out of unfinished reasoning.
    `think_opened`: the chat template opened `<think>` (see `template_opens_think`)."""
    return parse_response(output, "auto", think_opened=think_opened).answer


# ----------------------------------------------------------------------------------------------------------------
# Single-answer multiple choice


@lru_cache(maxsize=1)
def _rule_verifier() -> RuleVerifier:
    """Built once, without the knowledge base: reading options needs none."""
    return RuleVerifier(diseases=[])


def mcq_letter(output: str, options: Mapping[str, str], *, think_opened: bool = False) -> str | None:
    """The option letter a response picks (as keyed in `options`), or None when it picks none or several.

    The final answer (see `final_answer`) is read by `RuleVerifier.choose_option`: a bare letter, "(B)", "the
    answer is B", "B. <text>", the option's text (case and punctuation folded), a contained or near-identical
    option text.
    """
    answer = final_answer(output, think_opened=think_opened)
    if answer is None or not options:
        return None
    letter, _rule = _rule_verifier().choose_option(answer, options)
    if letter is None:  # the parsed answer lost meaningful symbols ('*' is markdown to it): try the raw line
        raw = _raw_answer_line(output, think_opened)
        if raw and raw != answer:
            letter, _rule = _rule_verifier().choose_option(raw, options)
    return letter


def _raw_answer_line(output: str, think_opened: bool = False) -> str | None:
    """The first non-empty line of the final response (after the reasoning, as `parse_response` cuts it), as
    written (no markdown stripping)."""
    tail = parse_response(output, "auto", think_opened=think_opened).response or ""
    line = next((x.strip() for x in tail.splitlines() if x.strip()), "")
    return line.rstrip("。.;；!！").strip() or None


def mcq_accuracy(
    outputs: Sequence[str], cases: Sequence[Case], *, n_resamples: int = 2000, seed: int = 0,
    think_opened: bool = False,
) -> Estimate:
    """Share of outputs whose chosen letter (`mcq_letter`) is the case's `answer_letter`, with its bootstrap CI.
    An output that picks no option counts as wrong."""
    if len(outputs) != len(cases):
        raise ValueError(f"{len(outputs)} outputs for {len(cases)} cases")
    correct = []
    for output, case in zip(outputs, cases):
        if not case.options or case.answer_letter is None:
            raise ValueError(f"case {case.id!r} is not multiple choice (no options or no answer_letter)")
        correct.append(mcq_letter(output, case.options, think_opened=think_opened) == case.answer_letter)
    return bootstrap_ci(correct, n_resamples=n_resamples, seed=seed)


# ----------------------------------------------------------------------------------------------------------------
# Multiple-answer multiple choice

# One item of a letter set: a parenthesised letter or run "(B)", "（AC）", or a standalone capital / compact run
# of capitals ("B", "ACD") not touching other letters.
_ITEM = r"(?:[(\[（【]\s*[A-Z]+\s*[)\]）】]|(?<![A-Za-z])[A-Z]+(?![A-Za-z]))"
_SEP = r"(?:\s*(?:[,;/&+、，；]|\band\b|以及|和|及|与)\s*|\s*)"
_SET = rf"{_ITEM}(?:{_SEP}{_ITEM})*"
_ITEM_RE = re.compile(_ITEM)
# Phrases that introduce the letters: at the start of the answer, or anywhere in it.
_LEAD_START = re.compile(
    r"^\s*(?:(?:the\s+)?(?:correct|right|final|best)?\s*(?:answers?|options?|choices?)\s*(?:are|is|:)?"
    r"|(?:正确)?(?:答案|选项)\s*(?:是|为)?\s*:?|应?选择?)\s*",
    re.IGNORECASE,
)
_LEAD_ANYWHERE = re.compile(
    r"(?:answers?|options?|choices?)\s*(?:are|is|:)\s*|(?:答案|选项)\s*(?:是|为)?\s*:?\s*|选择?\s*",
    re.IGNORECASE,
)
_WHOLE = re.compile(rf"\s*(?P<set>{_SET})\s*[.!。！]?\s*")
# After a leading set: end, punctuation, a spaced dash, "are correct" / "is correct", or Chinese ("AC正确");
# not a hyphen ("B-cell") nor a word ("A patient").
_AFTER = r"(?=\s*$|\s*[.:;,!)。：；，！）]|\s+[-–—]\s|\s+(?:are|is)\b|\s*[\u4e00-\u9fff])"
_LEADING = re.compile(rf"\s*(?P<set>{_SET}){_AFTER}")
# Right after "answer is" a reason may follow too ("A and C because ..."), but not any word ("ACE inhibitors").
_AFTER_LEAD = re.compile(rf"\s*(?P<set>{_SET})(?:{_AFTER}|(?=\s+(?:because|since|as|as\s+they|given)\b))")


def parse_letter_set(text: str, letters: Collection[str], *, think_opened: bool = False) -> set[str]:
    """The set of option letters a multiple-answer response gives ("A, C", "AC", "A and C", "答案：ACD", "(B)(D)").

    Only the final answer (see `final_answer`) is read, and only letter-set forms: the whole answer being a
    set (after an optional "Answer:"/"Options"/"答案"/"选" lead), a set at its start followed by punctuation or
    "are correct", or a set right after "answer is"/"options are"/"答案是"/"选". A set is standalone capitals or
    compact runs of distinct capitals, bracketed or separated by commas, "and", 和, 、 ...; every letter must be
    one of `letters` (case-insensitive; returned as keyed in `letters`), else nothing is read. So ordinary words
    give nothing: "A patient with ..." is not option A. Returns the empty set when no set is found.
    """
    answer = final_answer(text, think_opened=think_opened)
    if answer is None:
        return set()
    answer = unicodedata.normalize("NFKC", answer).strip()
    allowed = {str(x).strip().upper(): x for x in letters}
    candidates = []
    body = _LEAD_START.sub("", answer, count=1)
    for source in dict.fromkeys([body, answer]):  # the whole answer, with and without its lead
        whole = _WHOLE.fullmatch(source)
        if whole:
            candidates.append(whole["set"])
        leading = _LEADING.match(source)
        if leading:
            candidates.append(leading["set"])
    for lead in _LEAD_ANYWHERE.finditer(answer):
        after = _AFTER_LEAD.match(answer, lead.end())
        if after:
            candidates.append(after["set"])
    for candidate in candidates:
        chosen = _letters_of(candidate, allowed)
        if chosen:
            return chosen
    return set()


def _letters_of(span: str, allowed: Mapping[str, str]) -> set[str]:
    """The letters of a matched set, or the empty set when one is not an option or a run repeats a letter."""
    chosen: set[str] = set()
    for item in _ITEM_RE.findall(span):
        run = re.sub(r"[^A-Z]", "", item)
        if len(set(run)) != len(run) or any(ch not in allowed for ch in run):
            return set()
        chosen |= {allowed[ch] for ch in run}
    return chosen


def multi_answer_f1(predicted: Sequence[set[str]], gold: Sequence[set[str]]) -> float:
    """Micro-F1 over option letters (WiNGPT's MedReMCQ metric): true positives, false positives and false
    negatives are summed over all items, then F1 = 2TP / (2TP + FP + FN). Letters compare case-insensitively.

    No items: nan. Items but no letter anywhere (all sets empty): 1.0, nothing to find and nothing wrongly given.
    """
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predictions for {len(gold)} gold answers")
    if not gold:
        return math.nan
    tp = fp = fn = 0
    for pred, want in zip(predicted, gold):
        p = {str(x).strip().upper() for x in pred}
        g = {str(x).strip().upper() for x in want}
        tp, fp, fn = tp + len(p & g), fp + len(p - g), fn + len(g - p)
    if tp + fp + fn == 0:
        return 1.0
    return 2 * tp / (2 * tp + fp + fn)


# ----------------------------------------------------------------------------------------------------------------
# Numeric answers

_MINUS = "\u2212\u2013\u2014"  # minus sign, en dash, em dash written before a number
_NUMBER = re.compile(
    rf"(?<![A-Za-z0-9_.,])(?P<sign>[-+{_MINUS}](?=\.?\d))?"
    r"(?P<mantissa>\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d|,\d)|\d+(?:\.\d+)?|\.\d+)"
    r"(?P<exponent>[eE][-+]?\d+(?![A-Za-z]))?"
    r"(?:\s*[x×*·]\s*10\s*\^\s*(?P<power>[-+\u2212]?\d+))?"
)


def first_number(text: str) -> float | None:
    """The first number in `text`: signed, with thousands commas ("1,234.5"), decimals, scientific notation
    ("1.2e3", "1.2 × 10^3"); digits inside words ("CHA2DS2-VASc") are skipped. None when there is none."""
    text = unicodedata.normalize("NFKC", text)
    match = _NUMBER.search(text)
    if match is None:
        return None
    value = float(match["mantissa"].replace(",", "") + (match["exponent"] or ""))
    if match["power"]:
        value *= 10.0 ** int(match["power"].replace("\u2212", "-"))
    return -value if match["sign"] and match["sign"] != "+" else value


def numeric_within(answer_text: str, lower: float, upper: float, *, think_opened: bool = False) -> bool:
    """True when the first number of the final answer (see `final_answer`, `first_number`) lies in
    [lower, upper], bounds included (MedCalc-Bench scores calculations against such a range). No number: False."""
    if lower > upper:
        raise ValueError(f"lower bound {lower} is above upper bound {upper}")
    answer = final_answer(answer_text, think_opened=think_opened)
    value = first_number(answer) if answer is not None else None
    return value is not None and lower <= value <= upper
