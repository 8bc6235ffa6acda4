"""The think-before-answer parser: both formats, what is missing, and answer extraction."""

import pytest

from clinical_rl.rewards.answer_format import extract_final_answer, normalize_answer, parse_response


@pytest.mark.parametrize(
    ("text", "fmt", "thinking", "answer", "missing"),
    [
        ("<think>cough and fever</think>\nDiagnosis: Pneumonia.", "think", "cough and fever", "Pneumonia", ""),
        ("  <THINK> a\nb </THINK> **Final diagnosis:** gout", "think", "a\nb", "gout", ""),
        ("## Thinking\nhmm, wait\n## Final Response\nThe most likely diagnosis is gout.", "huatuo", "hmm, wait",
         "gout", ""),
        ("## Thinking\nx\n## Final Response\n诊断：急性阑尾炎。", "auto", "x", "急性阑尾炎", ""),
        ("<think>x</think>", "think", "x", None, "answer"),
        ("<think>reasoning that was cut off", "think", "reasoning that was cut off", None, "answer"),
        ("<think></think> Diagnosis: flu", "think", None, "flu", "thinking"),
        ("Diagnosis: flu", "think", None, "flu", "thinking"),
        ("", "auto", None, None, "both"),
        # the huatuo headers are not the think format
        ("## Thinking\nx\n## Final Response\ngout", "think", None, "Thinking", "thinking"),
    ],
)
def test_parse_response(text, fmt, thinking, answer, missing):
    parsed = parse_response(text, fmt)
    assert (parsed.thinking, parsed.answer, parsed.missing) == (thinking, answer, missing)


def test_extract_final_answer_prefers_the_diagnosis_phrase_over_the_first_line():
    text = "Putting it together, several findings matter.\nFinal diagnosis: acute pancreatitis\nPlan: fluids."
    assert extract_final_answer(text) == "acute pancreatitis"
    assert extract_final_answer("综合分析，最可能的诊断是：系统性红斑狼疮。") == "系统性红斑狼疮"
    assert extract_final_answer("The answer is (B).") == "(B)"
    assert extract_final_answer("Graves disease\nbecause ...") == "Graves disease"
    assert extract_final_answer(" \n \n") is None


def test_normalize_answer_folds_width_case_and_punctuation_but_keeps_symbols():
    assert normalize_answer("Ｇｒａｖｅｓ’  Disease!") == normalize_answer("graves disease")
    assert normalize_answer("急性阑尾炎。") == "急性阑尾炎"
    assert normalize_answer("↓ ↑ normal.") == "↓ ↑ normal"
    assert normalize_answer("↓ ↑ normal") != normalize_answer("↑ ↓ normal")
