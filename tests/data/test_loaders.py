"""Case loaders: the shared datasets load with the right fields, generic formats round-trip real files, and every
malformed row names the file, the line (or row) and the field."""

import json
import logging
import typing
from pathlib import Path

import pytest

from clinical_rl.config_stages import DataConfig
from clinical_rl.config_files import ConfigError, load_config
from clinical_rl.data.cases import Case
from clinical_rl.data.loaders import FORMATS, CaseFormatError, detect_format, load_cases

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture(scope="module")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared datasets not found at {SHARED.resolve()} (a clone without ../shared/data)")
    return SHARED


# ---------------------------------------------------------------------------------------------------------------
# The shared datasets


def test_medqa_loads_every_row_with_its_letter_and_option_text(shared):
    cases = load_cases(str(shared / "medqa_usmle_test.jsonl"))
    assert len(cases) == 1273
    assert {c.answer_letter for c in cases} == {"A", "B", "C", "D"}
    assert all(sorted(c.options) == ["A", "B", "C", "D"] for c in cases)
    assert all(c.options[c.answer_letter] == c.answer for c in cases)
    assert len({c.id for c in cases}) == 1273
    first = cases[0]
    assert (first.id, first.answer_letter, first.language, first.source) == ("0", "B", "en", "medqa")
    assert first.answer == "Tell the attending that he cannot fail to disclose this mistake"
    assert first.question.startswith("A junior orthopaedic surgery resident")


def test_huatuo_o1_open_ended_and_mcq_modes(shared):
    path = shared / "huatuo_o1_demo.json"
    raw = json.loads(path.read_text())
    open_ended = load_cases(str(path))
    assert len(open_ended) == len(raw) == 198
    assert [c.question for c in open_ended] == [r["Open-ended Verifiable Question"] for r in raw]
    assert [c.answer for c in open_ended] == [r["Ground-True Answer"] for r in raw]
    assert all(c.options is None and c.answer_letter is None for c in open_ended)
    assert (open_ended[0].id, open_ended[0].source, open_ended[0].language) == ("huatuo_o1_demo-0", "huatuo_o1", "en")

    mcq = load_cases(str(path), fmt="huatuo_o1_mcq")
    assert len(mcq) == 198
    assert mcq[0].question == raw[0]["question"]
    assert (mcq[0].answer_letter, mcq[0].answer) == ("D", "Parvovirus B19 infection")
    assert mcq[0].options == raw[0]["options"]
    assert {len(c.options) for c in mcq} == {4, 5}


def test_cmb_clin_keeps_cases_with_a_diagnosis_question_and_logs_the_skips(shared, caplog):
    raw = json.loads((shared / "cmb_clin_zh.json").read_text())
    with caplog.at_level(logging.WARNING, logger="clinical_rl.data.loaders"):
        cases = load_cases(str(shared / "cmb_clin_zh.json"))
    assert len(raw) == 74 and len(cases) == 53  # 21 cases have no question asking for this patient's diagnosis
    assert "skipped 21 of 74" in caplog.text and "鉴别诊断" in caplog.text
    by_id = {c.id: c for c in cases}
    first = by_id["0"]
    assert first.answer == "嵌顿性腹股沟斜疝合并肠梗阻"  # from "诊断：嵌顿性腹股沟斜疝合并肠梗阻。"
    assert first.question.startswith(raw[0]["description"].strip())
    assert first.question.endswith("\n\n简述该病人的诊断及诊断依据。")
    assert (first.language, first.source) == ("zh", "cmb_clin")
    assert by_id["21"].answer == "左下肢丹毒"  # "(1) 诊断：左下肢丹毒"
    assert by_id["50"].answer == "急性化脓性梗阻性胆管炎合并右膈下脓肿"  # "诊断为：..."
    assert by_id["11"].answer == "食管癌"  # answer has no 诊断： line -> the title's disease
    assert by_id["16"].answer == "隐睾癌变"  # "（1）诊断" with nothing after it -> the title's disease
    assert "3" not in by_id  # no QA pair mentions 诊断
    assert "15" not in by_id  # only 鉴别诊断
    assert "8" not in by_id  # 膀胱破裂如何诊断？ names the disease: general knowledge


def test_medrbench_question_is_the_summary_plus_an_instruction(shared):
    raw = json.loads((shared / "medrbench_diagnosis_100.json").read_text())
    cases = load_cases(str(shared / "medrbench_diagnosis_100.json"))
    assert len(cases) == 100
    assert [c.id for c in cases] == list(raw)
    first, gold = cases[0], raw["PMC11625232"]["generate_case"]
    assert first.id == "PMC11625232"
    assert first.answer == gold["diagnosis_results"]
    assert first.question.startswith(gold["case_summary"].rstrip())
    assert first.question.rstrip().endswith("what is the final diagnosis?")
    assert (first.department, first.language, first.source) == ("other", "en", "medrbench")


def test_shared_files_are_detected_by_name_and_the_rest_by_extension(shared, tmp_path):
    assert detect_format(shared / "cmb_clin_zh.json") == "cmb_clin"
    assert detect_format(shared / "medrbench_diagnosis_100.json") == "medrbench"
    assert detect_format(shared / "huatuo_o1_demo.json") == "huatuo_o1"
    assert detect_format(shared / "medqa_usmle_test.jsonl") == "medqa"
    assert detect_format(tmp_path / "other.json") == "json"
    assert detect_format(tmp_path / "x.CSV") == "csv"
    assert detect_format(tmp_path) == "hf"
    assert detect_format("builtin") == "builtin"


def test_builtin_is_the_generated_knowledge_base_dataset():
    cases = load_cases("builtin", seed=3)
    assert cases == load_cases("builtin", seed=3) and {c.language for c in cases} == {"en", "zh"}
    assert all(c.source == "builtin-kb" and c.icd10 for c in cases)
    assert load_cases("builtin", limit=5) == load_cases("builtin")[:5]


def test_departments_and_vignettes_per_disease_scope_the_builtin_data():
    cases = load_cases("builtin", language="en", departments=["respiratory"], builtin_per_disease=3, seed=1)
    assert len(cases) == 12 * 3 and {c.department for c in cases} == {"respiratory"}  # 12 respiratory diseases
    assert len({c.question for c in cases}) == len(cases)  # three different vignettes of each disease
    assert {c.answer for c in cases} == {c.answer for c in cases[:12]}  # every disease in each round
    one = load_cases("builtin", language="en", departments=["respiratory"], seed=1)
    assert [c.question for c in one] == [c.question for c in cases[:12]]  # the first round is the same
    with pytest.raises(ValueError, match="unknown departments \\['pulmonology'\\]"):
        load_cases("builtin", departments=["pulmonology"])


def test_departments_filter_any_case_file(tmp_path):
    file = tmp_path / "cases.jsonl"
    file.write_text("\n".join(json.dumps(r) for r in [
        {"question": "q1", "answer": "Asthma", "icd10": "J45.9"},
        {"question": "q2", "answer": "Gout", "icd10": "M10.9"},
    ]) + "\n")
    assert [c.question for c in load_cases(file, departments=["respiratory"])] == ["q1"]
    with pytest.raises(CaseFormatError, match="no cases of the departments"):
        load_cases(file, departments=["cardiology"])


def test_language_override_and_limit(shared):
    cases = load_cases(str(shared / "medqa_usmle_test.jsonl"), language="zh", limit=5)
    assert [c.id for c in cases] == ["0", "1", "2", "3", "4"]
    assert {c.language for c in cases} == {"zh"}


# ---------------------------------------------------------------------------------------------------------------
# Generic formats: real files with a field mapping

ROWS = [
    {"case": "Fever and productive cough; right lower lobe consolidation.", "dx": "Pneumonia", "code": "J18.9",
     "lang": "en", "mcq": {"A": "Pneumonia", "B": "Asthma"}, "key": "A"},
    {"case": "多饮多尿，血糖28 mmol/L，酮体阳性。", "dx": "糖尿病酮症酸中毒", "code": "E10.1", "lang": "zh",
     "mcq": {"A": "低血糖", "B": "糖尿病酮症酸中毒", "C": "高渗高血糖状态"}, "key": "B"},
]
MAPPING = {"question": "case", "answer": "dx", "icd10": "code", "language": "lang", "options": "mcq",
           "answer_letter": "key"}


def _assert_round_trip(cases: list[Case], stem: str) -> None:
    assert [c.question for c in cases] == [r["case"] for r in ROWS]
    assert [c.answer for c in cases] == [r["dx"] for r in ROWS]
    assert [c.options for c in cases] == [r["mcq"] for r in ROWS]
    assert [c.answer_letter for c in cases] == ["A", "B"]
    assert [c.language for c in cases] == ["en", "zh"]
    assert [c.department for c in cases] == ["respiratory", "endocrinology"]  # derived from the mapped icd10
    assert [c.id for c in cases] == [f"{stem}-0", f"{stem}-1"]  # no id column


def test_jsonl_round_trip(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS) + "\n")
    _assert_round_trip(load_cases(str(path), fields=MAPPING), "mine")


def test_json_array_round_trip(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(ROWS, ensure_ascii=False, indent=2))
    _assert_round_trip(load_cases(str(path), fields=MAPPING), "mine")


def test_csv_round_trip_with_options_as_a_json_string(tmp_path):
    import csv

    path = tmp_path / "mine.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(ROWS[0]))
        writer.writeheader()
        for row in ROWS:
            writer.writerow({**row, "mcq": json.dumps(row["mcq"], ensure_ascii=False)})
    _assert_round_trip(load_cases(str(path), fields=MAPPING), "mine")


def test_parquet_round_trip(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "mine.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    cases = load_cases(str(path), fields=MAPPING)
    # a struct column pads each row to the union of keys with nulls; those are not options
    assert pq.read_table(path).to_pylist()[0]["mcq"] == {"A": "Pneumonia", "B": "Asthma", "C": None}
    _assert_round_trip(cases, "mine")


def test_hf_dataset_saved_to_disk_round_trip(tmp_path):
    import datasets

    path = tmp_path / "mine_ds"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(path))
    _assert_round_trip(load_cases(str(path), fields=MAPPING), "mine_ds")
    _assert_round_trip(load_cases(str(path), fmt="hf", fields=MAPPING), "mine_ds")


def test_hf_format_reads_a_local_file_with_load_dataset(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS) + "\n")
    _assert_round_trip(load_cases(str(path), fmt="hf", fields=MAPPING), "mine")


def test_identity_mapping_and_explicit_ids(tmp_path):
    path = tmp_path / "plain.jsonl"
    rows = [{"question": "q1", "answer": "a1", "id": 7, "department": "cardiology", "source": "ward"},
            {"question": "q2", "answer": "a2", "id": "x-2"}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    cases = load_cases(str(path))
    assert [c.id for c in cases] == ["7", "x-2"]
    assert [c.department for c in cases] == ["cardiology", "other"]
    assert [c.source for c in cases] == ["ward", "plain.jsonl"]


# ---------------------------------------------------------------------------------------------------------------
# Malformed rows


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_invalid_json_line_names_the_file_and_line(tmp_path):
    good = json.dumps({"question": "q", "answer": "a"})
    path = _write(tmp_path / "bad.jsonl", f"{good}\n{good}\n{{not json\n{good}\n")
    with pytest.raises(CaseFormatError, match="invalid JSON") as err:
        load_cases(path)
    assert f"{path}:3:" in str(err.value)


def test_missing_answer_names_the_field_and_line(tmp_path):
    path = _write(tmp_path / "bad.jsonl", '{"question": "q", "answer": "a"}\n\n{"question": "q"}\n')
    with pytest.raises(CaseFormatError) as err:
        load_cases(path)
    assert f"{path}:3:" in str(err.value) and "'answer'" in str(err.value) and "missing" in str(err.value)


def test_missing_mapped_field_names_the_field_and_its_column(tmp_path):
    path = _write(tmp_path / "bad.jsonl", '{"case": "q", "answer": "a"}\n')
    with pytest.raises(CaseFormatError, match=r":1: field 'answer' \(column 'dx'\) missing"):
        load_cases(path, fields={"question": "case", "answer": "dx"})


def test_wrong_type_names_the_field_and_the_type_found(tmp_path):
    path = _write(tmp_path / "bad.jsonl", '{"question": "q", "answer": "a"}\n{"question": "q", "answer": 42}\n')
    with pytest.raises(CaseFormatError, match=r"bad.jsonl:2: field 'answer' must be a string, found int"):
        load_cases(path)
    path = _write(tmp_path / "opts.jsonl", '{"question": "q", "answer": "a", "options": ["a", "b"]}\n')
    with pytest.raises(CaseFormatError, match=r"opts.jsonl:1: field 'options' must be an object.*found list"):
        load_cases(path)


def test_json_array_error_names_the_line_where_the_record_starts(tmp_path):
    text = '[\n  {"question": "q1",\n   "answer": "a1"},\n\n  {\n    "question": "q2",\n    "answer": null\n  }\n]\n'
    path = _write(tmp_path / "bad.json", text)
    with pytest.raises(CaseFormatError) as err:
        load_cases(path)
    assert f"{path}:5: record [1]: field 'answer' is null" in str(err.value)


def test_json_object_of_records_error_names_the_line_of_its_key(tmp_path):
    rows = {"r1": {"question": "q", "answer": "a"}, "r2": {"question": "q", "answer": 3}}
    path = _write(tmp_path / "bad.json", json.dumps(rows, indent=2))
    with pytest.raises(CaseFormatError, match=r"bad.json:6: record 'r2': field 'answer' must be a string, found int"):
        load_cases(path)
    good = {"r1": {"question": "q", "answer": "a"}}
    assert load_cases(_write(tmp_path / "good.json", json.dumps(good)))[0].id == "r1"


def test_invalid_json_file_names_its_line(tmp_path):
    path = _write(tmp_path / "bad.json", '[\n{"question": "q", "answer": "a"},\n{"question": \n]\n')
    with pytest.raises(CaseFormatError, match=r"bad.json:4: invalid JSON"):
        load_cases(path)


def test_csv_error_names_the_line_where_the_record_starts(tmp_path):
    text = 'question,answer,options\n"two\nline question",a,\nq,,\n'
    path = _write(tmp_path / "bad.csv", text)
    with pytest.raises(CaseFormatError, match=r"bad.csv:4: field 'answer' is empty$"):
        load_cases(path)
    path = _write(tmp_path / "opts.csv", 'question,answer,options\nq,a,{not json}\n')
    with pytest.raises(CaseFormatError, match=r"opts.csv:2: field 'options' is not a JSON object"):
        load_cases(path)


def test_parquet_and_hf_errors_name_the_row_index(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"question": "q", "answer": "a"}, {"question": "q", "answer": None}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "bad.parquet")
    with pytest.raises(CaseFormatError, match=r"bad.parquet: row 1: field 'answer' is null"):
        load_cases(str(tmp_path / "bad.parquet"))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "bad_ds"))
    with pytest.raises(CaseFormatError, match=r"bad_ds: row 1: field 'answer' is null"):
        load_cases(str(tmp_path / "bad_ds"))


def test_schema_errors_carry_the_location(tmp_path):
    path = _write(tmp_path / "bad.jsonl", '{"question": "q", "answer": "a", "options": {"A": "a"}, '
                                          '"answer_letter": "C"}\n')
    with pytest.raises(CaseFormatError, match=r"bad.jsonl:1: answer_letter 'C' is not among options"):
        load_cases(path)
    path = _write(tmp_path / "dept.jsonl", '{"question": "q", "answer": "a", "department": "surgery"}\n')
    with pytest.raises(CaseFormatError, match=r"dept.jsonl:1: field 'department' is 'surgery'"):
        load_cases(path)


def test_named_loader_errors_name_the_source_field(tmp_path):
    raw = {"PMC1": {"generate_case": {"case_summary": "s"}}}
    path = _write(tmp_path / "medrbench_diagnosis_100.json", json.dumps(raw, indent=2))
    with pytest.raises(CaseFormatError, match=r":2: record 'PMC1': field 'answer' \(column 'generate_case.diagnosis_results'\) missing"):
        load_cases(path)
    rows = [{"realidx": 1, "question": "q", "options": {"A": "x", "B": "y"}, "answer_idx": "A", "answer": "y"}]
    path = _write(tmp_path / "medqa_usmle_test.jsonl", json.dumps(rows[0]) + "\n")
    with pytest.raises(CaseFormatError, match=r":1: field 'answer' 'y' is not the text of option 'A'"):
        load_cases(path)


def test_unknown_format_lists_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown data format 'xml'; valid formats: auto, builtin, huatuo_o1"):
        load_cases(str(tmp_path / "x.xml"), fmt="xml")
    with pytest.raises(ValueError, match=r"set data.format to one of: builtin, .*parquet, hf"):
        load_cases(str(_write(tmp_path / "x.xml", "<x/>")))


def test_bad_field_mapping_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"unknown schema fields \['diagnosis'\]"):
        load_cases(_write(tmp_path / "a.jsonl", '{"question": "q", "answer": "a"}\n'), fields={"diagnosis": "dx"})
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_cases(str(tmp_path / "absent.jsonl"))
    with pytest.raises(ValueError, match="no cases"):
        load_cases(_write(tmp_path / "empty.jsonl", "\n"))


# ---------------------------------------------------------------------------------------------------------------
# Config


def test_data_config_formats_match_the_loaders():
    literal = typing.get_args(DataConfig.model_fields["format"].annotation)
    assert set(literal) == {"auto", *FORMATS}


def test_data_config_fields_are_validated_with_file_and_line(tmp_path):
    cfg = load_config(None, ["data.format=csv", "data.fields={question: case}", "data.language=zh", "data.limit=3"])
    assert (cfg.data.format, cfg.data.fields, cfg.data.language, cfg.data.limit) == ("csv", {"question": "case"},
                                                                                     "zh", 3)
    path = tmp_path / "bad.yaml"
    path.write_text("steps: 1\ndata:\n  format: xml\n")
    with pytest.raises(ConfigError, match=f"{path}:3: data.format"):
        load_config(path)
    path.write_text("steps: 1\ndata:\n  fields:\n    diagnosis: dx\n")
    with pytest.raises(ConfigError, match="unknown schema fields"):
        load_config(path)
