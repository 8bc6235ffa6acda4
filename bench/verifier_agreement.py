"""How the rule verifier decides on real data: what it gets right, what it leaves to the judge, what it gets wrong.

Pairs with a known truth, all from ../shared/data:
- positives (the same diagnosis worded twice): MedR-Bench `final_diagnosis` (first sentence) vs its gold
  `diagnosis_results`; HuatuoGPT-o1 MCQ `answer` vs its open-ended `Ground-True Answer`;
- negatives (different diagnoses): every ordered pair of distinct CMB-Clin diagnoses.
Prints, per set, the share decided correct / incorrect / left undecided, and the error rates that matter:
false negatives (a positive called incorrect) and false positives (a negative called correct).

    python bench/verifier_agreement.py
"""

from __future__ import annotations

import collections
import json
import re
import time
from pathlib import Path

from clinical_rl.data.cases import Case
from clinical_rl.data.loaders import load_cases
from clinical_rl.rewards.rule_verifier import RuleVerifier

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def positives() -> dict[str, list[tuple[str, Case]]]:
    medr = json.loads((SHARED / "medrbench_diagnosis_100.json").read_text())
    medr_pairs = []
    for key, row in medr.items():
        summary = re.sub(r"\*\*", "", row["generate_case"]["final_diagnosis"])
        first_sentence = re.split(r"\.\s", summary)[0]
        medr_pairs.append((first_sentence, Case("", row["generate_case"]["diagnosis_results"], id=key)))
    huatuo = json.loads((SHARED / "huatuo_o1_demo.json").read_text())
    huatuo_pairs = [(row["answer"], Case("", row["Ground-True Answer"])) for row in huatuo]
    return {"medrbench paraphrase": medr_pairs, "huatuo option vs open answer": huatuo_pairs}


def negatives() -> list[tuple[str, Case]]:
    cases = load_cases(str(SHARED / "cmb_clin_zh.json"))
    return [(other.answer, case) for case in cases for other in cases if other.answer != case.answer]


# HuatuoGPT-o1's `answer` sometimes holds option codes ("bd", "abe", "None", "2 & 3") instead of the option text.
_OPTION_CODE = re.compile(r"^(?:[a-e]{1,5}|none|all|\d(?:\s*&\s*\d)*)$", re.IGNORECASE)


def report(name: str, pairs: list[tuple[str, Case]], verifier: RuleVerifier, truth: str) -> None:
    start = time.perf_counter()
    verdicts = [verifier.verify(answer, case).verdict for answer, case in pairs]
    per_pair_us = (time.perf_counter() - start) / len(pairs) * 1e6
    counts, n = collections.Counter(verdicts), len(pairs)
    miss = "incorrect" if truth == "correct" else "correct"
    wrong = [answer for (answer, _), v in zip(pairs, verdicts) if v == miss]
    codes = sum(bool(_OPTION_CODE.match(a.strip())) for a in wrong)
    print(f"{name:32s} n={n:5d}  correct {counts['correct'] / n:6.1%}  incorrect {counts['incorrect'] / n:6.1%}"
          f"  undecided {counts['undecided'] / n:6.1%}  | {'false neg' if truth == 'correct' else 'false pos'}"
          f" {len(wrong) / n:6.1%}" + (f" ({codes} of them option codes, not text)" if codes else "")
          + f"  [{per_pair_us:.0f} us/pair]")


def main() -> None:
    verifier = RuleVerifier()
    for name, pairs in positives().items():
        report(name, pairs, verifier, "correct")
    report("cmb-clin distinct diagnoses", negatives(), verifier, "incorrect")


if __name__ == "__main__":
    main()
