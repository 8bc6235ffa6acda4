"""The think-before-answer parser: both formats, what is missing and why, and answer extraction (issue 11)."""

import pytest

from clinical_rl.rewards import answer_format as af
from clinical_rl.rewards.answer_format import extract_final_answer, normalize_answer, parse_response, prompt_opens_think


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
        # the huatuo headers are not the think format: no reasoning, though the Final Response label is still read
        ("## Thinking\nx\n## Final Response\ngout", "think", None, "gout", "thinking"),
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



# ---------------------------------------------------------------------------------------------------------------
# Issue 11, failing inputs 3-7: each once failed; the value asserted is the right one.


def test_input3_the_final_label_beats_an_earlier_differential():
    text = "<think>RLQ pain</think>\nDifferential diagnosis: mesenteric adenitis\nFinal diagnosis: acute appendicitis"
    assert parse_response(text).answer == "acute appendicitis"  # was "mesenteric adenitis"


def test_input4_a_label_on_its_own_line_takes_the_next_line():
    assert parse_response("<think>x</think>\n**Final diagnosis:**\nAcute appendicitis").answer == "Acute appendicitis"


def test_input5_the_answer_comes_only_from_after_the_last_closed_block():
    text = "<think>A</think>\n<think>… diagnosis: myocardial infarction …</think>\nDiagnosis: aortic dissection"
    parsed = parse_response(text)
    assert (parsed.answer, parsed.missing, parsed.response) == ("aortic dissection", "", "Diagnosis: aortic dissection")
    # and nothing is fished out of a second block when nothing follows it
    parsed = parse_response("<think>A</think>\n<think>Diagnosis: myocardial infarction</think>")
    assert (parsed.answer, parsed.missing, parsed.reason) == (None, "answer", af.NOTHING_AFTER)


def test_input6_a_template_that_pre_opens_the_reasoning_block():
    completion = "Cough, fever, consolidation on the film…\n</think>\nDiagnosis: community-acquired pneumonia"
    opened = parse_response(completion, think_opened=True)
    assert (opened.thinking, opened.answer, opened.missing) == (
        "Cough, fever, consolidation on the film…", "community-acquired pneumonia", "")
    assert parse_response(completion, "auto", think_opened=True).answer == "community-acquired pneumonia"
    # Without the flag the thinking is missing, and the reason points at the flag.
    closed = parse_response(completion)
    assert (closed.missing, closed.reason) == ("thinking", af.STRAY_CLOSE)
    # A model that writes the opener again anyway is read the same; one cut off before </think> has no answer.
    assert parse_response("<think>\n" + completion, think_opened=True).answer == "community-acquired pneumonia"
    cut = parse_response("reasoning, Diagnosis: pneumonia", think_opened=True)
    assert (cut.answer, cut.missing, cut.reason) == (None, "answer", af.NOT_CLOSED)


@pytest.mark.parametrize("line", [
    "Answer: $B$", "The answer is \\boxed{B}", "The answer is $\\boxed{\\text{B}}$.", "**Final Answer**\n\\[ \\boxed{B} \\]",
    "Final answer: `B`", "**B**", "答案：$B$", "最终答案是 \\boxed{B}。", "Therefore \\(\\boxed{B}\\)",
])
def test_input7_latex_and_markdown_wrappers_are_stripped(line):
    assert parse_response(f"<think>options weighed</think>\n{line}").answer == "B"


# ---------------------------------------------------------------------------------------------------------------
# The rules behind them


@pytest.mark.parametrize(("tail", "answer"), [
    # the last of equally ranked labels wins: the final answer is the last conclusion
    ("Diagnosis: migraine\nOn reflection:\nDiagnosis: subarachnoid haemorrhage", "subarachnoid haemorrhage"),
    ("Final diagnosis: A\nFinal diagnosis: B", "B"),
    # an explicit final label beats a later generic one, a heading label beats the same words in prose
    ("Final diagnosis: gout\nDiagnosis codes follow.\nDiagnosis: see above", "gout"),
    ("Diagnosis: acute appendicitis\n\nThe diagnosis is supported by rebound tenderness.", "acute appendicitis"),
    ("Putting it together, the most likely diagnosis is acute pancreatitis.", "acute pancreatitis"),
    ("The answer is C.\nAnswer: D", "C"),
    # boxes: one is the answer; several are never narrowed to the last one (a policy could box every option)
    ("Diagnosis: A\n\\boxed{B}", "B"),
    ("\\boxed{A}\\boxed{B}", "A B"),
    ("Answer: \\boxed{A} or \\boxed{B}", "A or B"),
    # differential lines are never the answer
    ("Differential diagnoses: A, B\nDiagnosis: C", "C"),
    ("Differential diagnosis:\n- mesenteric adenitis\n- ovarian torsion\n\nAcute appendicitis", "Acute appendicitis"),
    ("DDx: gastroenteritis. Final diagnosis: acute appendicitis", "acute appendicitis"),
    # labels on their own line, with markdown
    ("## Diagnosis\nGout", "Gout"),
    ("**Final diagnosis**:\n- Acute appendicitis", "Acute appendicitis"),
    ("The final answer is:\n(B) Escherichia coli", "(B) Escherichia coli"),
    # no label: the first line, whole (cutting at a sentence end would let "A. Or possibly B." read as A)
    ("Graves disease\nbecause ...", "Graves disease"),
    ("Acute appendicitis. Or possibly mesenteric adenitis.", "Acute appendicitis. Or possibly mesenteric adenitis"),
    ("“Acute appendicitis”", "Acute appendicitis"),
    # Chinese: final and generic labels, a label on its own line, differential lines skipped
    ("最终诊断：急性阑尾炎。", "急性阑尾炎"),
    ("诊断：\n急性阑尾炎", "急性阑尾炎"),
    ("**最终诊断**\n急性阑尾炎", "急性阑尾炎"),
    ("鉴别诊断：肠系膜淋巴结炎\n最终诊断：急性阑尾炎", "急性阑尾炎"),
    ("诊断：胃肠炎\n最终诊断为急性阑尾炎", "急性阑尾炎"),
    ("综合分析，最可能的诊断是：系统性红斑狼疮。", "系统性红斑狼疮"),
    ("鉴别诊断：\n1. 肠系膜淋巴结炎\n2. 卵巢扭转\n\n诊断：急性阑尾炎", "急性阑尾炎"),
])
def test_final_answer_rules(tail, answer):
    assert parse_response(f"<think>reasoning</think>\n{tail}").answer == answer
    assert extract_final_answer(tail) == answer


@pytest.mark.parametrize(("text", "fmt", "thinking", "answer"), [
    ("## Thinking:\nhmm\n## Final Response:\nThe most likely diagnosis is gout.", "huatuo", "hmm", "gout"),
    ("**Thinking**\nhmm\n\n**Final Response**\n\nDiagnosis: gout", "auto", "hmm", "gout"),
    ("## Thinking.\nhmm\n**Final Response:**\nGout", "auto", "hmm", "Gout"),
    ("## 思考\n发热\n## 最终回复：\n诊断：痛风", "auto", "发热", "痛风"),
    ("## Thinking\na\n## Final Response\nearly\n## Thinking\nb\n## Final Response\nGout", "huatuo",
     "a\n## Final Response\nearly\n## Thinking\nb", "Gout"),
])
def test_huatuo_headers_with_punctuation_and_in_chinese(text, fmt, thinking, answer):
    parsed = parse_response(text, fmt)
    assert (parsed.thinking, parsed.answer, parsed.missing, parsed.fmt) == (thinking, answer, "", "huatuo")


@pytest.mark.parametrize(("text", "fmt", "missing", "reason"), [
    ("", "think", "both", af.EMPTY_RESPONSE),
    ("  \n ", "auto", "both", af.EMPTY_RESPONSE),
    ("<think>differentials: MI vs PE", "think", "answer", af.NOT_CLOSED),
    ("<think>x</think>\n  \n", "think", "answer", af.NOTHING_AFTER),
    ("<think>x</think>\n**Final diagnosis:**", "think", "answer", af.LABEL_ONLY),
    ("<think>x</think>\n诊断：", "think", "answer", af.LABEL_ONLY),
    ("<think>x</think>\nDiagnosis: MI\n<think>wait, maybe", "think", "answer", af.REOPENED),
    ("<think>x</think>\nDifferential diagnosis: MI, PE", "think", "answer", af.ONLY_DIFFERENTIAL),
    ("<think></think>\nDiagnosis: flu", "think", "thinking", af.EMPTY_REASONING),
    ("<think></think>", "think", "both", f"{af.EMPTY_REASONING}; {af.NOTHING_AFTER}"),
    ("Diagnosis: flu", "think", "thinking", af.NO_REASONING),
    ("Diagnosis: x <think>late</think> flu", "think", "thinking", af.REASONING_NOT_FIRST),
    ("x</think>\nDiagnosis: flu", "think", "thinking", af.STRAY_CLOSE),
    ("## Thinking\nstill going", "huatuo", "answer", af.NO_FINAL_HEADER),
    ("Diagnosis: gout", "huatuo", "thinking", af.NO_THINKING_HEADER),
    ("## Thinking\n\n## Final Response\nGout", "huatuo", "thinking", af.EMPTY_THINKING_SECTION),
    ("## Thinking\nx\n## Final Response\n", "auto", "answer", af.NOTHING_AFTER_HEADER),
    ("<think>x</think>\nDiagnosis: flu", "think", "", ""),
])
def test_missing_parts_say_why(text, fmt, missing, reason):
    parsed = parse_response(text, fmt)
    assert (parsed.missing, parsed.reason) == (missing, reason)
    assert (parsed.answer is None) == (missing in ("answer", "both"))


def test_a_stray_close_is_never_read_from_the_reasoning_before_it():
    # Without think_opened the thinking is missing, and the answer still comes only from after the last </think>.
    assert parse_response("Diagnosis: MI\n</think>\nDiagnosis: aortic dissection").answer == "aortic dissection"


def test_prompt_opens_think():
    assert prompt_opens_think("<|im_start|>assistant\n<think>\n")
    assert prompt_opens_think("<｜Assistant｜><THINK>")
    assert not prompt_opens_think("<|im_start|>assistant\n")
    assert not prompt_opens_think("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # Qwen3, thinking disabled
