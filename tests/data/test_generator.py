"""Vignettes generated from the knowledge base: coverage, languages, determinism, difficulty and case fields."""

import dataclasses
import re
import statistics

import pytest

from clinical_rl.data.cases import Case
from clinical_rl.data.generator import TEMPLATES, generate_cases
from clinical_rl.data.knowledge_base import Disease, disease_by_id, load_knowledge_base
from clinical_rl.rewards.answer_format import normalize_answer

KB = load_knowledge_base()
BY_ID = {d.id: d for d in KB}
CJK = re.compile(r"[\u4e00-\u9fff]")


def disease_of(case: Case) -> Disease:
    return BY_ID[re.fullmatch(r"kb-(.+)-(en|zh)-\d+", case.id).group(1)]


def own_texts(disease: Disease, language: str) -> list[str]:
    return [t.get(language) for t in (*disease.symptoms, *disease.exam, *disease.labs, *disease.risk_factors)]


def distractors(case: Case) -> int:
    """Symptoms and signs of other diseases of the department found in the case, not part of its own findings."""
    disease = disease_of(case)
    own = " | ".join(own_texts(disease, case.language))
    borrowed = {
        t.get(case.language)
        for other in KB
        if other.department == disease.department and other.id != disease.id
        for t in (*other.symptoms, *other.exam)
    }
    return sum(1 for text in borrowed if text in case.question and text not in own)


def test_default_covers_every_disease_in_both_languages_once():
    cases = generate_cases()
    assert len(cases) == 2 * len(KB)
    assert {(disease_of(c).id, c.language) for c in cases} == {(d.id, lang) for d in KB for lang in ("en", "zh")}
    assert len({c.id for c in cases}) == len(cases)


@pytest.mark.parametrize("extra", [0, 7])
def test_n_cycles_over_all_pairs(extra):
    n = 2 * len(KB) + extra
    cases = generate_cases(n, seed=3)
    assert len(cases) == n
    assert {(disease_of(c).id, c.language) for c in cases} == {(d.id, lang) for d in KB for lang in ("en", "zh")}
    assert sum(c.id.endswith("-1") for c in cases) == extra  # the second round restarts the numbering


def test_small_n_is_a_seeded_shuffle_not_the_file_order():
    first = [disease_of(c).id for c in generate_cases(20, seed=0)]
    assert first != [d.id for d in KB[:20]]
    assert len(set(first)) > 10


def test_same_arguments_give_identical_cases():
    assert generate_cases(60, seed=5, difficulty=0.7) == generate_cases(60, seed=5, difficulty=0.7)


def test_different_seed_changes_the_text():
    a = {c.id: c.question for c in generate_cases(seed=1)}
    b = {c.id: c.question for c in generate_cases(seed=2)}
    assert a.keys() == b.keys()
    assert sum(a[k] != b[k] for k in a) > 0.9 * len(a)


def test_a_case_does_not_depend_on_n():
    assert generate_cases(10, seed=4) == generate_cases(50, seed=4)[:10]


def test_languages_render():
    for case in generate_cases(seed=0):
        if case.language == "zh":
            assert len(CJK.findall(case.question)) > 30
            assert re.match(r"^(患者|\d+岁)", case.question)
            assert case.question.endswith(("？", "。")) and "诊断" in case.question[-20:]
        else:
            assert not CJK.search(case.question)
            non_ascii = sum(not ch.isascii() for ch in case.question)
            assert non_ascii <= 0.02 * len(case.question), case.question
            assert re.match(r"^An? (\d+-year-old|man|woman|boy|girl)", case.question)
            assert case.question.endswith("?") and "diagnosis" in case.question[-60:]


def test_only_requested_languages():
    cases = generate_cases(seed=0, languages=("zh",))
    assert len(cases) == len(KB) and {c.language for c in cases} == {"zh"}


def test_case_fields():
    for case in generate_cases(seed=0):
        disease = disease_of(case)
        assert case.id.startswith(f"kb-{disease.id}-{case.language}-")
        assert case.icd10 == disease.icd10
        assert case.department == disease.department
        assert case.source == "builtin-kb"
        assert case.options is None and case.answer_letter is None
        assert case.answer == (disease.name.zh if case.language == "zh" else disease.name.en)


def test_zh_answers_are_chinese_names():
    zh = [c for c in generate_cases(seed=0) if c.language == "zh"]
    assert {c.answer for c in zh} == {d.name.zh for d in KB}
    assert disease_by_id("acute_myocardial_infarction").name.zh in {c.answer for c in zh}
    assert all(CJK.search(c.answer) for c in zh)


def test_demographics_respect_age_range_and_sex():
    for case in generate_cases(4 * len(KB), seed=9):
        disease = disease_of(case)
        match = re.search(r"(\d+)岁" if case.language == "zh" else r"(\d+)-year-old|aged (\d+)", case.question)
        age = int(next(group for group in match.groups() if group))
        assert disease.age[0] <= age <= disease.age[1], case.question
        if case.language == "zh":
            sex = "male" if re.search(r"男", case.question[:15]) else "female"
        else:
            sex = "male" if re.search(r"\b(man|boy)\b", case.question[:60]) else "female"
        if disease.sex != "any":
            assert sex == disease.sex, case.question


def test_both_sexes_appear_for_any_sex_diseases():
    cases = [c for c in generate_cases(4 * len(KB), seed=2) if c.language == "en"]
    assert any(re.search(r"\b(man|boy)\b", c.question[:60]) for c in cases)
    assert any(re.search(r"\b(woman|girl)\b", c.question[:60]) for c in cases)


def test_every_template_is_used():
    cases = generate_cases(seed=0)
    for language, sections in TEMPLATES.items():
        texts = [c.question for c in cases if c.language == language]
        for section, templates in sections.items():
            assert len(templates) >= 3
            for template in templates:
                pattern = re.sub(r"\\\{\w+\\\}", ".+?", re.escape(template))
                assert any(re.search(pattern, t) for t in texts), (language, section, template)


def test_a_case_never_names_its_own_diagnosis():
    for difficulty in (0.0, 0.5, 1.0):
        for case in generate_cases(seed=11, difficulty=difficulty):
            text = f" {normalize_answer(case.question)} "
            for name in disease_of(case).names(case.language):
                key = normalize_answer(name)
                named = key in text if case.language == "zh" else f" {key} " in text
                assert not named, (name, case.question)


def test_easy_cases_show_the_most_telling_findings():
    for case in generate_cases(seed=0, difficulty=0.0):
        disease = disease_of(case)
        for findings in (disease.symptoms, disease.exam, disease.labs):
            assert findings[0].get(case.language) in case.question
        assert distractors(case) == 0


def test_higher_difficulty_adds_distractors_and_hides_telling_labs():
    easy = generate_cases(4 * len(KB), seed=0, difficulty=0.1)
    hard = generate_cases(4 * len(KB), seed=0, difficulty=0.9)
    easy_distractors = statistics.mean(distractors(c) for c in easy)
    hard_distractors = statistics.mean(distractors(c) for c in hard)
    assert easy_distractors < 0.4 and hard_distractors > 0.8, (easy_distractors, hard_distractors)

    def first_lab_shown(cases):
        return statistics.mean(disease_of(c).labs[0].get(c.language) in c.question for c in cases)

    assert first_lab_shown(easy) > 0.85 and first_lab_shown(hard) < 0.5
    assert statistics.mean(len(c.question) for c in hard) < 0.9 * statistics.mean(len(c.question) for c in easy)


@pytest.mark.parametrize(("department", "sex", "borrowed"), [
    ("urology", "any", True),
    ("urology", "female", False),  # a man's case borrows nothing from a women-only disease
    ("immunology", "any", False),  # nor from another department
])
def test_distractors_come_from_the_same_department_and_respect_sex(department, sex, borrowed):
    bph = disease_by_id("benign_prostatic_hyperplasia")
    other = dataclasses.replace(disease_by_id("acute_cystitis"), id="other", department=department, sex=sex)
    cases = [c for c in generate_cases(200, seed=1, difficulty=1.0, diseases=[bph, other]) if "prostatic" in c.id]
    found = {t.en for c in cases for t in (*other.symptoms, *other.exam) if t.get(c.language) in c.question}
    assert bool(found) == borrowed, found


def test_custom_disease_list():
    chosen = [disease_by_id("gout"), disease_by_id("migraine")]
    cases = generate_cases(seed=0, diseases=chosen)
    assert sorted(c.id for c in cases) == sorted(f"kb-{d.id}-{lang}-0" for d in chosen for lang in ("en", "zh"))
    assert generate_cases(0) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"difficulty": 1.5}, "difficulty"),
        ({"difficulty": -0.1}, "difficulty"),
        ({"languages": ("fr",)}, "languages"),
        ({"languages": ()}, "languages"),
        ({"n": -1}, "n must be"),
        ({"diseases": []}, "no diseases"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_cases(**kwargs)
