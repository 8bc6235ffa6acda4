"""The exam vocabulary, chain cases from the knowledge base and MedR-Bench, and their JSONL round trip."""

import json
import pickle
import re
from pathlib import Path

import pytest

from clinical_rl.data.knowledge_base import load_knowledge_base
from clinical_rl.data.rows import CaseFormatError
from clinical_rl.envs.chain_cases import ChainCase, Exam, chain_cases_from_kb, load_chain_cases, write_chain_cases
from clinical_rl.envs.diagnostic_chain import Episode
from clinical_rl.envs.exams import load_vocabulary
from clinical_rl.envs.medrbench_chain import load_medrbench_chain

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
KB = load_knowledge_base()
VOCAB = load_vocabulary()


@pytest.fixture(scope="module")
def medrbench() -> list[ChainCase]:
    if not (SHARED / "medrbench_diagnosis_100.json").is_file():
        pytest.skip(f"shared datasets not found at {SHARED.resolve()} (a clone without ../shared/data)")
    return load_medrbench_chain(SHARED / "medrbench_diagnosis_100.json")


@pytest.mark.parametrize("language", ["en", "zh"])
def test_every_kb_labs_line_maps_to_a_vocabulary_exam(language):
    unmapped = [line.get(language) for d in KB for line in d.labs if VOCAB.recognise(line.get(language)) is None]
    assert unmapped == []


def test_the_vocabulary_ships_with_the_package():
    assert '"envs/*.yaml"' in (Path(__file__).parents[2] / "pyproject.toml").read_text()


def test_request_names_match_by_name_synonym_pattern_and_fuzzy():
    assert VOCAB.match_name("CBC") == VOCAB.match_name("Full Blood Count") == VOCAB.match_name("血常规") == "cbc"
    assert VOCAB.match_name("ＣＸＲ") == VOCAB.match_name("胸片") == "chest_x_ray"  # full width folded
    assert VOCAB.match_name("EKG") == VOCAB.match_name("心电图") == "ecg"
    assert VOCAB.match_name("MRI of the brain") == "mri_brain"  # pattern
    assert VOCAB.match_name("echocardiogrpahy") == "echocardiography"  # typo, fuzzy
    assert VOCAB.match_name("lumbar puncture") == VOCAB.match_name("CSF analysis") == "lumbar_puncture"
    assert VOCAB.match_name("EEG") == "eeg" and VOCAB.match_name("ECG") == "ecg"
    assert VOCAB.match_name("quantum resonance spectroscopy") is None


def test_every_kb_chain_case_has_a_physical_exam_and_labs_in_both_languages():
    cases = chain_cases_from_kb()
    assert len(cases) == 2 * len(KB)
    for case in cases:
        assert case.exams[0].exam_id == "physical_exam" and case.exams[0].category == "physical"
        assert all(e.exam_id in VOCAB.by_id for e in case.exams)
        assert "?" not in case.question and "？" not in case.question  # no diagnostic question, only the history
    en, zh = cases[0], cases[1]
    assert [e.exam_id for e in en.exams] == [e.exam_id for e in zh.exams]
    assert zh.exams[2].name == "血常规" and en.exams[2].name == "complete blood count"


def _leaks(text: str, names: list[str], language: str) -> list[str]:
    if language == "zh":
        return [n for n in names if n in text]
    return [n for n in names if re.search(rf"(?<![A-Za-z0-9]){re.escape(n)}(?![A-Za-z0-9])", text, re.IGNORECASE)]


def test_no_kb_observation_names_the_disease():
    by_answer = {(d.name.get(lang), lang): d for d in KB for lang in ("en", "zh")}
    for case in chain_cases_from_kb():
        names = by_answer[(case.answer, case.language)].names(case.language)
        assert _leaks(case.question, names, case.language) == [], case.id
        episode = Episode(case)
        request = "<request>" + "; ".join(e.name for e in case.exams) + "</request>"
        observation = episode.step(request)
        assert "[withheld]" not in observation  # the raw record is clean, not merely redacted
        assert _leaks(observation, names, case.language) == [], case.id
        assert episode.summary()["info_requests"] == len(case.exams)


def test_medrbench_every_case_has_a_presentation_and_an_exam(medrbench):
    assert len(medrbench) == 100
    for case in medrbench:
        assert case.question.startswith(("Patient Information:", "Case 1:")), case.id
        assert len(case.exams) >= 1 and case.source == "medrbench-chain"
        assert "Ancillary" not in case.question and "Treatment" not in case.question


def test_medrbench_split_of_one_case(medrbench):
    case = next(c for c in medrbench if c.id == "PMC11625232")
    assert case.question == (
        "Patient Information: 13-year-old male\nChief Complaint: Severe left eye pain\n"
        "History of Present Illness: Eyelid edema, erythema, localized warmth of the left eye; recent severe nasal "
        "congestion and headaches.\nPast Medical History: None reported.\nPersonal History: None reported.\n"
        "Family History: None reported.")
    assert case.answer == "Orbital cellulitis secondary to acute sinusitis with frontal epidural empyema."
    assert [(e.exam_id, e.name, e.category) for e in case.exams] == [
        ("physical_exam", "Physical Examination", "physical"), ("blood_tests", "Laboratory Findings", "lab"),
        ("ct", "NCCT Scan", "imaging"), ("mri", "NCMRI Scan", "imaging")]
    assert case.exams[0].result == "Febrile (39.5°C), with signs of orbital inflammation."


def test_medrbench_tests_outside_the_vocabulary_keep_their_name_and_are_orderable(medrbench):
    case = next(c for c in medrbench if c.id == "PMC11543139")
    torch = next(e for e in case.exams if e.name == "Maternal Serum Testing for TORCH Infections")
    assert (torch.exam_id, torch.category, torch.result) == (
        "other:maternal_serum_testing_for_torch_infections", "lab", "Normal.")
    episode = Episode(case)
    assert episode.step("<request>maternal serum testing for TORCH infections</request>") == (
        "Examination results:\nMaternal Serum Testing for TORCH Infections: Normal.\n"
        "You may order more examinations or give your final diagnosis.")


def test_jsonl_round_trip_keeps_every_field(tmp_path):
    cases = chain_cases_from_kb(per_disease=1)[:6]
    file = tmp_path / "chain.jsonl"
    write_chain_cases(cases, file)
    assert load_chain_cases(file) == cases
    assert pickle.loads(pickle.dumps(cases[1])) == cases[1]
    row = json.loads(file.read_text(encoding="utf-8").splitlines()[1])
    assert row["exams"][0] == {"exam_id": "physical_exam", "name": "体格检查", "category": "physical",
                               "result": cases[1].exams[0].result}


@pytest.mark.parametrize("exams, message", [
    (None, "field 'exams' missing"),
    ("CBC", "field 'exams' must be list, found str"),
    (["CBC"], "field 'exams[0]' must be an object, found str"),
    ([{"exam_id": "cbc", "name": "CBC", "category": "lab"}], "field 'exams[0].result' missing"),
    ([{"exam_id": "cbc", "name": "CBC", "category": "blood", "result": "normal"}],
     "field 'exams[0].category' is 'blood', not one of physical, lab, imaging, procedure"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, exams, message):
    good = {"question": "q", "answer": "a", "exams": [{"exam_id": "cbc", "name": "CBC", "category": "lab",
                                                       "result": "normal"}]}
    bad = {"question": "q", "answer": "a"} | ({"exams": exams} if exams is not None else {})
    file = tmp_path / "bad.jsonl"
    file.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(CaseFormatError) as err:
        load_chain_cases(file)
    assert str(err.value) == f"{file}:3: {message}"


def test_a_row_without_answer_names_the_field(tmp_path):
    file = tmp_path / "bad.jsonl"
    file.write_text(json.dumps({"question": "q", "exams": []}) + "\n", encoding="utf-8")
    with pytest.raises(CaseFormatError, match=rf"^{re.escape(str(file))}:1: field 'answer' missing"):
        load_chain_cases(file)


def test_exam_category_is_checked():
    with pytest.raises(ValueError, match="category 'blood'"):
        ChainCase(question="q", answer="a", exams=(Exam("cbc", "CBC", "blood", "x"),))  # type: ignore[arg-type]
