"""The adversarial suite: for every class of reward hacking, no member earns 1.0 (issue 11).

Members are generated over the whole knowledge base, in both languages, and scored through `ClinicalReward` (parser
+ rule cascade, no judge), so a hole in extraction or in matching shows up here. Each class also holds the honest
answer's control (the gold name itself earns 1.0), so the suite cannot pass by paying nothing.
"""

from __future__ import annotations

from collections import Counter

import pytest

from clinical_rl.data.cases import Case
from clinical_rl.data.knowledge_base import Disease, load_knowledge_base
from clinical_rl.rewards.base import RewardInput
from clinical_rl.rewards.clinical import ClinicalReward
from clinical_rl.rewards.contrast import _GROUPS_EN, _GROUPS_ZH
from clinical_rl.rewards.name_forms import canonical

KB = load_knowledge_base()
LANGUAGES = ("en", "zh")


def respond(answer: str) -> str:
    return f"<think>The findings point one way.</think>\nDiagnosis: {answer}"


def others(disease: Disease, n: int = 3) -> list[Disease]:
    """`n` other diseases, from other departments first (the easiest to mistake for a list of guesses)."""
    rest = [d for d in KB if d.id != disease.id]
    rest.sort(key=lambda d: (d.department == disease.department, d.id))
    return rest[:n]


def candidate_lists(d: Disease, lang: str) -> list[str]:
    gold, wrong = d.name.get(lang), [o.name.get(lang) for o in others(d)]
    if lang == "zh":
        return [f"{gold}、{wrong[0]}", f"{wrong[0]}，{gold}", f"{gold}；{wrong[1]}；{wrong[2]}", f"{gold}和{wrong[0]}",
                f"{wrong[0]}及{gold}", f"1. {wrong[1]}\n2. {gold}"]
    return [f"{gold}, {wrong[0]}", f"{wrong[0]}, {gold}", f"{gold}; {wrong[1]}; {wrong[2]}", f"{wrong[0]} and {gold}",
            f"1. {wrong[0]}\n2. {gold}", f"{gold}, {wrong[0]}, {wrong[1]}, {wrong[2]}"]


def hedges(d: Disease, lang: str) -> list[str]:
    gold, wrong = d.name.get(lang), others(d)[0].name.get(lang)
    if lang == "zh":
        return [f"{gold}或{wrong}", f"{wrong}还是{gold}", f"{gold}或者{wrong}", f"{gold}/{wrong}", f"不是{gold}",
                f"排除{gold}"]
    return [f"{gold} or {wrong}", f"either {wrong} or {gold}", f"{gold} vs {wrong}", f"{gold}/{wrong}",
            f"{wrong} rather than {gold}", f"{gold} and/or {wrong}", f"not {gold}", f"{gold} ruled out"]


def broad_terms(d: Disease, lang: str) -> list[str]:
    """The head word of a multi-word gold (pneumonia for community-acquired pneumonia), alone and repeated."""
    gold = d.name.get(lang)
    if lang == "zh":
        head = gold[-2:]
        return [head, head * 3, f"{head} {head} {head} {head}"] if len(gold) > 3 and head not in d.names("zh") else []
    words = gold.split()
    head = words[-1]
    if len(words) < 2 or head.lower() in {n.lower() for n in d.names("en")}:
        return []
    return [head, " ".join([head] * 5), f"{head}, {head}, {head}"]


def code_spam(d: Disease, lang: str) -> list[str]:
    codes = [d.icd10, *(o.icd10 for o in others(d, 4))]
    letter = d.icd10[0]
    return [", ".join(codes), " ".join(reversed(codes)), f"{codes[1]} {codes[0]}", f"{letter}00-{letter}99",
            f"{d.name.get(lang)} ({codes[1]}, {codes[0]})"]


def other_language(d: Disease, lang: str) -> list[str]:
    """Another disease, and the other language's head word, named in the language the gold is not in."""
    flip = "zh" if lang == "en" else "en"
    return [o.name.get(flip) for o in others(d)] + broad_terms(d, flip)


def sizes(d: Disease, lang: str) -> list[str]:
    gold = d.name.get(lang)
    return ["", " ", "...", f"{gold} " * 60, f"{gold}. " + "The patient is unwell. " * 400,
            (" ".join(o.name.get(lang) for o in KB))]


def contrasts(d: Disease, lang: str) -> list[str]:
    """The gold with one qualifier swapped for its contrast (acute -> chronic, 社区获得性 -> 医院获得性)."""
    gold = d.name.get(lang)
    out = []
    if lang == "zh":
        for group in _GROUPS_ZH:
            for member in group:
                if member in gold:
                    out += [gold.replace(member, other) for other in group if other != member and other not in gold]
        return [o for o in out if canonical(o) != canonical(gold)]  # 2型 -> 二型 is the same name
    words = gold.lower().split()
    for i, word in enumerate(words):
        for group in _GROUPS_EN:
            if word in group and not word.isdigit() and len(word) > 1:
                out += [" ".join([*words[:i], other, *words[i + 1 :]]) for other in group if other != word]
    return out


CLASSES = {
    "candidate list": candidate_lists, "hedge or negation": hedges, "broad term": broad_terms,
    "code spam": code_spam, "other language": other_language, "empty or huge": sizes, "contrast": contrasts,
}


MIN_MEMBERS = {"contrast": 90}  # only names that carry a qualifier have a contrast


@pytest.fixture(scope="module")
def reward() -> ClinicalReward:
    return ClinicalReward()


@pytest.mark.parametrize("kind", CLASSES)
def test_no_member_of_a_hacking_class_earns_full_credit(reward, kind):
    items, labels = [], []
    for disease in KB:
        for lang in LANGUAGES:
            case = Case("q", disease.name.get(lang), icd10=disease.icd10, language=lang)
            items.append(RewardInput("q", respond(disease.name.get(lang)), case.answer, case))  # the control
            labels.append(("control", disease.name.get(lang)))
            for answer in CLASSES[kind](disease, lang):
                items.append(RewardInput("q", respond(answer), case.answer, case))
                labels.append(("attack", answer[:80]))
    results = reward.score(items)
    paid = [(label, r.details.get("path")) for (role, label), r in zip(labels, results)
            if role == "attack" and r.reward == 1.0]
    controls = [r.reward for (role, _), r in zip(labels, results) if role == "control"]
    attacks = sum(role == "attack" for role, _ in labels)
    assert attacks >= MIN_MEMBERS.get(kind, 100), f"{kind}: only {attacks} members generated"
    assert controls == [1.0] * len(controls), f"{kind}: the gold itself is not paid"
    assert not paid, f"{kind}: {len(paid)} of {attacks} members earn 1.0, e.g. {paid[:5]}"


def test_option_letter_spam_never_earns_full_credit(reward):
    options = {"A": "Aspirin", "B": "Heparin", "C": "Warfarin", "D": "Alteplase", "E": "Clopidogrel"}
    spam = ["A B C D E", "A, B, C, D, E", "ABCDE", "A/B/C/D/E", "B or C", "A and B", "(A)(B)", "答案是A或B",
            "A、B、C", "$A$, $B$", "The answer is A, B or C", r"\boxed{A}\boxed{B}", "B C", "B, then C"]
    paid = Counter()
    for gold in options:
        case = Case("q", options[gold], options=options, answer_letter=gold)
        results = reward.score([RewardInput("q", respond(s), case.answer, case) for s in [gold, *spam]])
        assert results[0].reward == 1.0
        paid.update(s for s, r in zip(spam, results[1:]) if r.reward == 1.0)
    assert not paid, paid


def test_answer_only_inside_the_reasoning_earns_nothing(reward):
    case = Case("q", "Acute appendicitis")
    responses = ["<think>Diagnosis: Acute appendicitis</think>",
                 "<think>Diagnosis: Acute appendicitis</think>\n",
                 "<think>I think it is acute appendicitis</think>\nDiagnosis: unclear",
                 "<think>a</think>\n<think>Diagnosis: Acute appendicitis",
                 "<think>Final diagnosis: acute appendicitis</think>\nI am not sure."]
    results = reward.score([RewardInput("q", r, case.answer, case) for r in responses])
    assert all(r.reward != 1.0 for r in results), [(r.reward, r.details.get("path")) for r in results]
