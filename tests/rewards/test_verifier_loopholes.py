"""Issue 11's failing inputs on matching, each with the value it must have, and the folds that widen coverage.

Inputs 3-7 (extraction) are in test_answer_format.py, 11 in test_server.py, 12 in test_field_mappings.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from clinical_rl.data.cases import Case
from clinical_rl.data.knowledge_base import narrows, load_knowledge_base
from clinical_rl.rewards.base import RewardInput
from clinical_rl.rewards.clinical import ClinicalReward
from clinical_rl.rewards.contrast import differ_by_contrast
from clinical_rl.rewards.icd10_names import codes_in_text, codes_named, relate_codes
from clinical_rl.rewards.name_forms import canonical
from clinical_rl.rewards.rule_verifier import RuleVerifier


@pytest.fixture(scope="module")
def verifier() -> RuleVerifier:
    return RuleVerifier()


def verdict(verifier: RuleVerifier, answer: str, gold: str, **case: object) -> str:
    return verifier.verify(answer, Case("q", gold, **case)).verdict


def test_input_1_a_broad_synonym_no_longer_pays_a_different_kind(verifier):
    # "pneumonia" was a synonym of community-acquired pneumonia and matched by containment
    assert verdict(verifier, "Hospital-acquired pneumonia", "Community-acquired pneumonia") == "incorrect"
    assert verdict(verifier, "Pneumonia", "Community-acquired pneumonia", icd10="J18.9") == "undecided"
    assert verdict(verifier, "医院获得性肺炎", "社区获得性肺炎", language="zh") == "incorrect"
    assert verdict(verifier, "Secondary hypertension", "Essential hypertension") == "incorrect"
    # the demo's rambling answer: a clause list naming "cancer" twice is not colon cancer
    rambling = "likely to be colorectal cancer, as the patient's condition and family history suggest cancer"
    assert verdict(verifier, rambling, "Colon cancer") != "correct"


def test_input_2_codes_count_once_and_at_the_golds_specificity(verifier):
    ami = {"icd10": "I21.9"}
    assert verdict(verifier, "I20.0, I21.9, I26.9, J18.9, K35.8", "acute myocardial infarction", **ami) == "incorrect"
    assert verdict(verifier, "I21.9", "acute myocardial infarction", **ami) == "correct"
    assert verdict(verifier, "Acute myocardial infarction (I21.9)", "acute myocardial infarction", **ami) == "correct"
    # the gold name with another category's code: name and code disagree, so the rules do not decide
    assert verdict(verifier, "Acute myocardial infarction (J18.9)", "acute myocardial infarction", **ami) == "undecided"
    assert verdict(verifier, "I21.4", "NSTEMI", icd10="I21.0") == "incorrect"  # a sibling subcategory


def test_input_8_a_genus_abbreviation_is_not_an_option_letter(verifier):
    options = {"A": "Streptococcus pneumoniae", "B": "Escherichia coli", "C": "Listeria monocytogenes",
               "D": "Neisseria meningitidis", "E": "Haemophilus influenzae"}
    case = Case("q", "Escherichia coli", options=options, answer_letter="B")
    assert verifier.verify("E. coli meningitis", case).verdict == "correct"
    assert verifier.verify("E. Haemophilus influenzae", case).verdict == "incorrect"  # "E." heading its own text
    assert verifier.verify("S. pneumoniae", case).verdict == "incorrect"


def test_input_9_undotted_and_u_chapter_codes_are_codes(verifier):
    assert codes_in_text("Diagnosis: I219") == ["I21.9"]
    assert verdict(verifier, "I219", "acute myocardial infarction", icd10="I21.9") == "correct"
    assert verdict(verifier, "U07.1", "COVID-19, virus identified", icd10="U07.1") == "correct"
    assert codes_in_text("vitamin B12 deficiency, b12") == []  # B12 is not an ICD-10 code


@pytest.mark.parametrize(("answer", "gold"), [
    ("cholelithiasis", "Gallstones"),  # Greek vs English (input 10)
    ("Anemia, iron deficiency", "Iron deficiency anaemia"),  # order inversion + UK/US spelling
    ("Oesophageal ulcers", "esophageal ulcer"),  # spelling + plural
    ("kidney stones", "Nephrolithiasis"),
    ("renal calculi", "kidney stone"),
    ("Crohn's disease", "Crohn disease"),
    ("Sjögren's syndrome", "Sjogren syndrome"),
    ("Type II diabetes mellitus", "Type 2 diabetes mellitus"),
    ("二型糖尿病", "2型糖尿病"),
    ("Essential hypertension", "Primary hypertension"),  # ICD-10 title alternatives: "Essential (primary) ..."
    ("Ischaemic strokes", "ischemic stroke"),
])
def test_input_10_true_paraphrases_are_correct_without_a_judge(verifier, answer, gold):
    assert verdict(verifier, answer, gold) == "correct"


def test_knowledge_base_refuses_umbrella_synonyms(tmp_path: Path):
    assert narrows(canonical("pneumonia"), canonical("Community-acquired pneumonia"), "en")
    assert narrows(canonical("高血压"), canonical("原发性高血压"), "zh")
    assert not narrows(canonical("insulin-dependent diabetes"), canonical("non-insulin-dependent diabetes"), "en")
    assert not narrows(canonical("房颤"), canonical("心房颤动"), "zh")  # an abbreviation, not the head noun
    shipped = Path(__file__).resolve().parents[2] / "clinical_rl" / "data" / "diseases.yaml"
    text = shipped.read_text(encoding="utf-8").replace('["CAP", "community acquired pneumonia"]',
                                                       '["CAP", "community acquired pneumonia", "pneumonia"]', 1)
    broken = tmp_path / "diseases.yaml"
    broken.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=r"entry 0 \(id 'community_acquired_pneumonia'\): field 'synonyms': "
                                         r"'pneumonia' is an umbrella term"):
        load_knowledge_base(broken)


def test_no_two_names_of_one_disease_contrast():
    """Contrast is checked before synonyms, so it must never split a disease's own names."""
    clashes = [(d.id, a, b) for d in load_knowledge_base() for lang in ("en", "zh")
               for a in d.names(lang) for b in d.names(lang) if a < b and differ_by_contrast(a, b)]
    assert not clashes


def test_contrasts_come_from_icd10_siblings_and_clinical_groups():
    assert differ_by_contrast("malignant neoplasm of colon", "malignant neoplasm of rectum")  # ICD-10 siblings
    assert differ_by_contrast("acute appendicitis with generalized peritonitis",
                              "acute appendicitis with localized peritonitis")
    assert differ_by_contrast("left ureteric stone", "right ureteric stone")
    assert differ_by_contrast("Hyperkalaemia", "hypokalemia")
    assert differ_by_contrast("肝内胆管结石", "肝外胆管结石")
    assert not differ_by_contrast("acute appendicitis", "appendicitis")  # less specific is not a contrast
    assert not differ_by_contrast("Crohn disease", "regional enteritis")


def test_icd10_titles_are_a_synonym_source():
    assert codes_named("Gallstones") == codes_named("Cholelithiasis") == {"K80"}
    assert relate_codes("I21", "I21.9") == "correct"  # I21.9 is the unspecified member of I21
    assert relate_codes("I21", "I21.4") == "undecided"  # only less specific
    assert relate_codes("J18.9", "I21.9") == "incorrect"


def test_reward_pays_paraphrases_and_refuses_lists_end_to_end():
    reward = ClinicalReward()
    case = Case("q", "Gallstones")
    answers = ["Cholelithiasis", "Gallstones or cholecystitis", "Gallstones, acute pancreatitis"]
    results = reward.score([RewardInput("q", f"<think>pain</think>\nDiagnosis: {a}", case.answer, case)
                            for a in answers])
    assert [r.reward for r in results] == [1.0, 0.1, 0.1]
    assert [r.details["path"] for r in results] == ["rule:exact", "rule:multiple", "rule:multiple"]


# -- found by red-teaming the first version (each was paid 1.0, or called wrong) -----------------------------------
IBS, UC = Case("q", "Irritable bowel syndrome", icd10="K58.8"), Case("q", "Ulcerative colitis", icd10="K51.9")
CAP_ZH, BRONCHITIS_ZH = Case("q", "社区获得性肺炎", language="zh"), Case("q", "急性气管-支气管炎", language="zh")
APPENDICITIS, APPENDICITIS_ZH = Case("q", "Acute appendicitis", icd10="K35.8"), Case("q", "急性阑尾炎", language="zh")
HODGKIN, NON_HODGKIN = Case("q", "Hodgkin lymphoma"), Case("q", "Non-Hodgkin lymphoma")
CAP = Case("q", "Community-acquired pneumonia", icd10="J18.9")
AMI, CUSHING = Case("q", "Acute myocardial infarction", icd10="I21.9"), Case("q", "Cushing syndrome")
ECOLI = Case("q", "Escherichia coli", options={"A": "Staphylococcus aureus", "B": "Escherichia coli",
                                              "C": "Listeria monocytogenes"}, answer_letter="B")


@pytest.mark.parametrize(("answer", "case"), [
    ("Irritable-bowel-syndrome [Ulcerative colitis]", IBS), ("Irritable-bowel-syndrome [Ulcerative colitis]", UC),
    ("社区获得性肺炎[急性气管-支气管炎]", CAP_ZH), ("社区获得性肺炎[急性气管-支气管炎]", BRONCHITIS_ZH),
    ("(Non-)Hodgkin lymphoma", HODGKIN), ("(Non-)Hodgkin lymphoma", NON_HODGKIN),
    ("Acute appendicitis (or Crohn disease)", APPENDICITIS), ("Acute appendicitis (ruled out)", APPENDICITIS),
    ("Acute (not) appendicitis", APPENDICITIS), ("Acute appendicitis?", APPENDICITIS),
    ("Acute appendicitis, which has been ruled out", APPENDICITIS),
    ("Acute appendicitis, since imaging excluded it", APPENDICITIS),
    ("Acute appendicitis, which could also be mesenteric adenitis", APPENDICITIS),
    ("急性阑尾炎（已排除）", APPENDICITIS_ZH), ("急性阑尾炎？", APPENDICITIS_ZH), ("急性阑尾炎，结合检查已排除", APPENDICITIS_ZH),
    ("Pneumonia (J18.9)", CAP), ("J18", CAP), ("I21.9 acute infarction of brain", AMI), ("E24.4", CUSHING),
    ("not Escherichia coli", ECOLI), ("Escherichia coli is unlikely", ECOLI),
    ("B. Escherichia coli or C. Listeria monocytogenes", ECOLI),
])
def test_hedges_brackets_and_broad_codes_are_never_paid(answer, case):
    (result,) = ClinicalReward().score([RewardInput("q", f"<think>x</think>\nDiagnosis: {answer}", case.answer, case)])
    assert result.reward != 1.0, (answer, case.answer, result.details["path"])


def test_the_verdict_cache_does_not_pay_a_list_for_its_bracketed_twin():
    reward = ClinicalReward()
    answers = ["Ulcerative colitis (Crohn disease)", "Ulcerative colitis, Crohn disease", "Ulcerative colitis / Crohn disease"]
    for order in (answers, answers[::-1]):
        results = reward.score([RewardInput("q", f"<think>x</think>\nDiagnosis: {a}", UC.answer, UC) for a in order])
        assert [r.reward for r in results] == [0.1, 0.1, 0.1]


@pytest.mark.parametrize(("answer", "case"), [
    ("Heart attack with cardiogenic shock", AMI),  # no word of the gold's, but its synonym "heart attack"
    ("I21.4", AMI),  # a specified sibling of the gold's unspecified code says more, not something else
    ("慢性阻塞性肺疾病急性加重", Case("q", "慢性阻塞性肺疾病", language="zh")),  # 急性 beside 慢性 is no contrast
    ("Seropositive rheumatoid arthritis", Case("q", "Rheumatoid arthritis", icd10="M06.9")),
])
def test_more_specific_forms_are_left_to_the_judge_not_called_wrong(verifier, answer, case):
    assert verifier.verify(answer, case).verdict == "undecided"


# -- found by the second red-team round ------------------------------------------------------------------------------
MCQ_ORGANISMS = Case("q", "Escherichia coli", options={
    "A": "Listeria monocytogenes", "B": "Escherichia coli", "C": "Streptococcus agalactiae",
    "D": "Neisseria meningitidis", "E": "Haemophilus influenzae"}, answer_letter="B")


@pytest.mark.parametrize(("answer", "case"), [
    ("Stroke", Case("q", "Stroke (ischemic)")), ("Stroke", Case("q", "Stroke (hemorrhagic)", icd10="I61.9")),
    ("糖尿病", Case("q", "糖尿病（1型）", language="zh")),  # a gold's bracket is a qualifier, not an ICD modifier
    ("Acute myocardial infarction", Case("q", "ST-elevation myocardial infarction")),  # a subtype is no synonym
    ("Gout", Case("q", "Acute gouty arthritis")), ("胃癌", Case("q", "胃腺癌", language="zh")),
    ("I50", Case("q", "Chronic heart failure", icd10="I50.9")),  # the head name's code for a qualified gold
    ("Escherichia coli or Listeria", MCQ_ORGANISMS), ("Escherichia coli (or Streptococcus)", MCQ_ORGANISMS),
    ("Escherichia coli, Listeria, Streptococcus, Neisseria, Haemophilus", MCQ_ORGANISMS),
    ("Escherichia coli, which is wrong", MCQ_ORGANISMS), ("Listeria-like Escherichia coli", MCQ_ORGANISMS),
    ("B. Escherichia coli. Listeria monocytogenes is second.", MCQ_ORGANISMS),
    ("Acute appendicitis, which is not the case", APPENDICITIS), ("Acute appendicitis, given the uncertainty", APPENDICITIS),
    ("Acute appendicitis, which along with mesenteric adenitis remains possible", APPENDICITIS),
    ("急性阑尾炎，因为尚不能确定", APPENDICITIS_ZH), ("急性阑尾炎，由于并非此病", APPENDICITIS_ZH),
    ("Acute appendicitis‽", APPENDICITIS), ("Acute appendicitis ⸮", APPENDICITIS),
    ("A\u0336c\u0336u\u0336t\u0336e\u0336 appendicitis", APPENDICITIS),  # struck through
])
def test_second_round_loopholes_are_closed(answer, case):
    (result,) = ClinicalReward().score([RewardInput("q", f"<think>x</think>\nDiagnosis: {answer}", case.answer, case)])
    assert result.reward != 1.0, (answer, case.answer, result.details["path"])


@pytest.mark.parametrize(("answer", "case"), [
    ("Community-acquired pneumonia (J18.9)", CAP),  # the gold name with its own code
    ("Bilateral radial head subluxation", Case("q", "Bilateral radial head subluxation (RHS)")),  # an abbreviation
    ("E. coli meningitis", MCQ_ORGANISMS),
])
def test_honest_answers_around_the_new_rules_are_still_paid(answer, case):
    (result,) = ClinicalReward().score([RewardInput("q", f"<think>x</think>\nDiagnosis: {answer}", case.answer, case)])
    assert result.reward == 1.0, (answer, case.answer, result.details["path"])


def test_abbreviation_search_stays_linear_on_repeated_generic_words(verifier):
    gold = ("Severe pneumonia caused by Aeromonas dhakensis infection with complications of septic shock, ARDS, "
            "pre-existing severe atrial septal defect, and pulmonary hypertension")
    answer = " ".join(w if w not in {"severe", "infection", "with", "of", "and"} else " ".join([w] * 8)
                      for w in canonical(gold).split()) + " xq"
    assert verifier.verify(answer, Case("q", gold)).verdict in ("undecided", "incorrect")  # in ms, not seconds
