"""Field mappings on files in the wild: a DxBench-shaped file (list-valued `symptoms`, its own `department` column)
loads through every entry point the config has (data, eval.benchmarks[], synthesis, `eval --benchmark --fields`),
and every bad mapping or record is named by config path, or by file, line, field and column."""

import json
import textwrap
from pathlib import Path

import pytest

from clinical_rl.config_files import ConfigError, load_config
from clinical_rl.data.loaders import CaseFormatError, load_cases

DXBENCH = [
    {"id": 1, "age": 54, "sex": "male", "symptoms": ["chest pain", "sweating"], "department": "Cardiology",
     "diagnosis": "Acute myocardial infarction", "icd10": "I21.9"},
    {"id": 2, "age": 31, "sex": "female", "symptoms": ["fever", "productive cough", "pleuritic pain"],
     "department": "Respiratory", "diagnosis": "Community-acquired pneumonia", "icd10": "J18.9"},
    {"id": 3, "age": 67, "sex": "male", "symptoms": ["tremor at rest"], "department": "Neurology",
     "diagnosis": "Parkinson disease", "icd10": "G20"},
]
TEMPLATE = "{age}-year-old {sex}. Symptoms: {symptoms}"
FIELDS_YAML = f'fields:\n  question: {{template: "{TEMPLATE}", join: "; "}}\n  answer: diagnosis\n'


def _section(header: str, indent: str, **keys: str) -> str:
    """`header:` then `keys` and FIELDS_YAML, indented by `indent` (YAML text of one config section)."""
    body = "".join(f"{key}: {value}\n" for key, value in keys.items()) + FIELDS_YAML
    return f"{header}\n" + textwrap.indent(body, indent)


@pytest.fixture()
def dxbench(tmp_path: Path) -> Path:
    path = tmp_path / "dxbench.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in DXBENCH))
    return path


def _assert_dxbench(cases) -> None:
    assert [c.question for c in cases] == [
        "54-year-old male. Symptoms: chest pain; sweating",
        "31-year-old female. Symptoms: fever; productive cough; pleuritic pain",
        "67-year-old male. Symptoms: tremor at rest",
    ]
    assert [c.answer for c in cases] == [row["diagnosis"] for row in DXBENCH]
    assert [c.department for c in cases] == ["cardiology", "respiratory", "neurology"]  # the file's own column
    assert [c.id for c in cases] == ["1", "2", "3"] and [c.icd10 for c in cases] == ["I21.9", "J18.9", "G20"]


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_dxbench_loads_through_data_config_as_ppo_reads_it(tmp_path, dxbench):
    from clinical_rl.rl.driver import preflight

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")  # preflight checks only that an HF directory is there
    cfg = load_config(_config(tmp_path, f"model:\n  path: {model}\n" + _section("data:", "  ", path=str(dxbench))))
    _, _, cases, _ = preflight(cfg)
    _assert_dxbench(cases)


def test_dxbench_loads_as_an_eval_benchmark(tmp_path, dxbench):
    from clinical_rl.eval.runner import load_benchmark

    benchmark = _section("eval:\n  benchmarks:\n    -", "      ", name="dxbench", path=str(dxbench))
    cfg = load_config(_config(tmp_path, benchmark.replace("-\n      ", "- ", 1)))
    _assert_dxbench(load_benchmark(cfg.eval.benchmarks[0], cfg.seed))


def test_dxbench_loads_as_synthesis_input(tmp_path, dxbench):
    from clinical_rl.synthesis.runner import synthesis_cases

    cfg = load_config(_config(tmp_path, _section("synthesis:", "  ", path=str(dxbench))))
    _assert_dxbench(synthesis_cases(cfg))


def test_eval_cli_passes_fields_to_the_benchmark(tmp_path, dxbench, capsys):
    from clinical_rl.cli import main

    argv = ["eval", "--model", f"m={tmp_path / 'no-model'}", "--benchmark", f"dx={dxbench}",
            "tracking.wandb_mode=disabled"]
    # the benchmark loads before any model opens: a mapping to a missing column stops there, naming it ...
    assert main([*argv, "--fields", "{question: {template: '{age} {gender}'}, answer: diagnosis}"]) == 2
    assert f"{dxbench}:1: field 'question' (template '{{age}} {{gender}}'): column 'gender' missing" in \
        capsys.readouterr().err
    # ... and a good one loads all three cases, so the run gets as far as the (absent) model
    assert main([*argv, "--fields", f"{{question: {{template: '{TEMPLATE}', join: '; '}}, answer: diagnosis}}"]) == 2
    assert "--model m: no HF model" in capsys.readouterr().err
    assert main([*argv, "--fields", "{question: {templat: x}}"]) == 2
    assert "--fields: question.templat: unknown key" in capsys.readouterr().err
    assert main(["eval", "--fields", "{answer: dx}"]) == 2
    assert "--fields applies to the --benchmark files" in capsys.readouterr().err


def test_colliding_department_column_renamed_mapped_or_kept_apart(tmp_path):
    rows = [{"case": "Dyspnoea, wheeze.", "dx": "Asthma", "icd10": "J45.9", "department": "Pulmonology",
             "ward": "Respiratory"}]
    path = tmp_path / "ward.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n")
    base = {"question": "case", "answer": "dx"}
    with pytest.raises(CaseFormatError, match=r"ward.jsonl:1: field 'department' is 'Pulmonology', not one of .*"
                                              r"values: \{NAME: DEPARTMENT\}\}, or set it to null"):
        load_cases(path, fields=base)
    # another column renamed onto the schema's department
    assert load_cases(path, fields={**base, "department": "ward"})[0].department == "respiratory"
    # the file's own column with its vocabulary mapped
    mapped = {**base, "department": {"column": "department", "values": {"Pulmonology": "respiratory"}}}
    assert load_cases(path, fields=mapped)[0].department == "respiratory"
    # kept apart: not read as the department (derived from icd10), still shown in the case text
    apart = {"question": {"template": "[{department}] {case}"}, "answer": "dx", "department": None}
    case = load_cases(path, fields=apart)[0]
    assert (case.question, case.department) == ("[Pulmonology] Dyspnoea, wheeze.", "respiratory")


def test_list_column_joined_in_jsonl_and_csv(tmp_path):
    path = tmp_path / "lists.jsonl"
    path.write_text(json.dumps({"findings": ["fever", 38.9, "neck stiffness"], "dx": "Meningitis"}) + "\n")
    fields = {"question": {"column": "findings", "join": " | "}, "answer": "dx"}
    assert load_cases(path, fields=fields)[0].question == "fever | 38.9 | neck stiffness"
    with pytest.raises(CaseFormatError, match=r"lists.jsonl:1: field 'question' \(column 'findings'\) must be a "
                                              r"string, found list \(map it as \{column: \.\.\., join"):
        load_cases(path, fields={"question": "findings", "answer": "dx"})
    csv = tmp_path / "lists.csv"
    csv.write_text('age,findings,dx\n40,"[""fever"", ""rash""]",Measles\n41,[not json] rash,Rubella\n')
    cases = load_cases(csv, fields={"question": {"template": "{age}: {findings}"}, "answer": "dx"})
    assert [c.question for c in cases] == ["40: fever, rash", "41: [not json] rash"]


def test_bad_records_name_file_line_field_and_column(tmp_path, dxbench):
    fields = {"question": {"template": TEMPLATE}, "answer": "diagnosis"}
    rows = [DXBENCH[0], {**DXBENCH[1], "symptoms": None}, DXBENCH[2]]
    path = tmp_path / "gaps.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(CaseFormatError, match=r"gaps.jsonl:2: field 'question' \(template .*\): column 'symptoms' "
                                              r"missing \(absent, null or empty\)"):
        load_cases(path, fields=fields)
    path.write_text(json.dumps({**DXBENCH[0], "symptoms": ["chest pain", {"site": "left arm"}]}) + "\n")
    with pytest.raises(CaseFormatError, match=r"gaps.jsonl:1: .*column 'symptoms' item 1 must be text or a number, "
                                              r"found dict"):
        load_cases(path, fields=fields)
    path.write_text(json.dumps({**DXBENCH[0], "sex": True}) + "\n")
    with pytest.raises(CaseFormatError, match=r"column 'sex' must be text or a number, found bool"):
        load_cases(path, fields=fields)


@pytest.mark.parametrize(
    ("section", "mapping", "expected"),
    [
        ("data", "{question: {template: '{age:>3}'}}", r"data.fields: .*question: template '\{age:>3\}': the "
                                                       r"placeholder of column 'age' has a format spec"),
        ("data", "{question: {template: 'Symptoms: {symptoms'}}", r"data.fields: .*question: template .*expected "
                                                                  r"'\}' before end of string"),
        ("synthesis", "{question: {template: 'no columns'}}", r"synthesis.fields: .*names no column"),
        ("synthesis", "{answer: null}", r"synthesis.fields: .*answer: cannot be null"),
        ("data", "{question: {column: a, template: '{b}'}}", r"question: give exactly one of column or template"),
        ("data", "{options: {template: '{a}'}}", r"options: takes a column"),
        ("data", "{question: {column: a, joiner: x}}", r"question.joiner: unknown key"),
        ("data", "{diagnosis: dx}", r"unknown schema fields \['diagnosis'\]"),
    ],
)
def test_bad_mappings_name_the_config_path(section, mapping, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, [f"{section}.fields={mapping}"])


def test_bad_benchmark_mapping_names_file_line_and_benchmark(tmp_path):
    path = _config(tmp_path, "eval:\n  benchmarks:\n    - name: dx\n      path: x.jsonl\n      fields:\n"
                             "        question: {template: '{a'}\n")
    with pytest.raises(ConfigError, match=rf"{path}:5: eval.benchmarks.0.fields: .*question: template '\{{a'"):
        load_config(path)
    path.write_text("eval:\n  benchmarks:\n    - name: dx\n      path: medqa_usmle_test.jsonl\n      format: medqa\n"
                    "      fields: {question: q}\n")
    with pytest.raises(ConfigError, match=r"eval.benchmarks\[dx\].fields applies only to the formats"):
        load_config(path)
