"""ClinicalReward: 1 / 0.1 / 0 shaping, the cosine length penalty, the cascade's cache and judge failures."""

import math

import pytest

from clinical_rl.data.cases import Case
from clinical_rl.rewards.base import RewardInput
from clinical_rl.rewards.cascade import CascadeVerifier
from clinical_rl.rewards.clinical import ClinicalReward
from clinical_rl.llm_client import ChatReply
from clinical_rl.rewards.judge import LLMJudge, p_true_from_logprobs, parse_verdict
from clinical_rl.rewards.rule_verifier import RuleVerifier
from clinical_rl.rewards.shaping import LengthPenalty

CASE = Case("A 19-year-old with migrating right iliac fossa pain.", "Acute appendicitis")
# Outside the knowledge base, so partial answers are left to the judge.
EMPYEMA = Case("A 13-year-old with sinusitis, fever and a frontal extra-axial collection.", "Frontal epidural empyema")


def item(response: str, case: Case = CASE, tokens: int | None = None) -> RewardInput:
    return RewardInput("prompt", response, case.answer, case, tokens)


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("<think>RLQ pain, rebound</think>\nDiagnosis: Acute appendicitis", 1.0),
        ("<think>pain</think> acute  APPENDICITIS.", 1.0),
        ("<think>pain</think>\nFinal diagnosis: acute appendicitis\nextra notes", 1.0),
        ("<think>pain</think>\nDiagnosis: Acute cholecystitis", 0.1),
        ("Diagnosis: Acute appendicitis", 0.0),  # answered without reasoning
        ("<think></think>Diagnosis: Acute appendicitis", 0.0),  # empty reasoning
        ("<think>pain, never closed. Diagnosis: Acute appendicitis", 0.0),
        ("Diagnosis: x <think>late</think> Acute appendicitis", 0.0),  # reasoning after the answer
        ("<think>pain</think>", 0.0),  # no answer
    ],
)
def test_reward_table(response, expected):
    (result,) = ClinicalReward().score([item(response)])
    assert result.status == "ok" and result.reward == expected


def test_outcome_values_one_tenth_zero():
    reward = ClinicalReward()
    results = reward.score([
        item("<think>RIF pain</think>\nDiagnosis: acute appendicitis"),
        item("<think>RIF pain</think>\nDiagnosis: migraine"),
        item("Diagnosis: acute appendicitis"),  # right, but without reasoning first
        item("<think>RIF pain, could be</think>"),  # reasoning without an answer
    ])
    assert [r.reward for r in results] == [1.0, 0.1, 0.0, 0.0]
    assert all(r.status == "ok" for r in results)
    assert [r.details["correct"] for r in results] == [1.0, 0.0, 0.0, 0.0]
    assert [r.details["format_ok"] for r in results] == [1.0, 1.0, 0.0, 0.0]
    assert results[2].details["missing_thinking"] == 1.0 and results[3].details["missing_answer"] == 1.0
    assert results[0].details["path"] == "rule:exact"


def test_values_and_format_are_configurable():
    reward = ClinicalReward(values={"correct": 2.0, "wrong": -1.0, "no_think": -2.0}, answer_format="huatuo")
    results = reward.score([
        item("## Thinking\nRIF pain\n## Final Response\nAcute appendicitis."),
        item("## Thinking\nRIF pain\n## Final Response\nGout."),
        item("<think>x</think> Acute appendicitis"),
    ])
    assert [r.reward for r in results] == [2.0, -1.0, -2.0]
    with pytest.raises(ValueError, match="judge"):
        ClinicalReward(judge={"backend": "openai"})  # no model named


def test_cosine_length_penalty_golden_numbers():
    penalty = LengthPenalty(start=100, end=200, max_penalty=0.5)
    # 0 up to start; half-cosine to max: 0.5 * (1 - cos(pi * x)) / 2 with x = (L - start) / (end - start)
    assert penalty(50) == 0.0 and penalty(100) == 0.0
    assert penalty(125) == pytest.approx(0.5 * (1 - math.cos(math.pi / 4)) / 2)  # 0.0732
    assert penalty(150) == pytest.approx(0.25)
    assert penalty(200) == pytest.approx(0.5) and penalty(10_000) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="must exceed"):
        LengthPenalty(start=200, end=100)

    reward = ClinicalReward(length_penalty={"start": 100, "end": 200, "max_penalty": 0.5})
    right = "<think>x</think>\nDiagnosis: acute appendicitis"
    results = reward.score([item(right, tokens=80), item(right, tokens=150)])
    assert results[0].reward == 1.0 and results[0].details["length_penalty"] == 0.0
    assert results[1].reward == pytest.approx(0.75) and results[1].details["length_penalty"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="response_tokens"):  # the reward actor turns this into status error
        reward.score([item(right, tokens=None)])


def test_undecided_without_judge_is_wrong_or_an_error_as_configured():
    partial = "<think>x</think>\nDiagnosis: epidural empyema with orbital cellulitis"
    assert ClinicalReward().score([item(partial, EMPYEMA)])[0].reward == 0.1
    failed = ClinicalReward(on_undecided="error").score([item(partial, EMPYEMA)])[0]
    assert failed.status == "error" and failed.reward is None and "undecided" in failed.details["error"]


class ScriptedBackend:
    """Unit-test stand-in for a judge endpoint: replies from a script and counts requests."""

    def __init__(self, replies):
        self.replies, self.requests = list(replies), 0

    def chat(self, conversations, max_tokens, temperature=0.0, top_logprobs=0):
        self.requests += len(conversations)
        return [self.replies.pop(0) for _ in conversations]


def test_cascade_asks_the_judge_only_for_undecided_answers_and_caches_verdicts():
    backend = ScriptedBackend([ChatReply("True", {"True": math.log(0.8), "False": math.log(0.2)})])
    cascade = CascadeVerifier(RuleVerifier(), LLMJudge(backend, threshold=0.5))
    items = [("frontal epidural empyema", EMPYEMA), ("frontal epidural empyema after sinusitis", EMPYEMA),
             ("migraine", EMPYEMA)]
    first = cascade.verify(items)
    assert [d.verdict for d in first] == ["correct", "correct", "incorrect"]
    assert [d.path for d in first] == ["rule:exact", "judge", "rule:disjoint"]
    assert first[1].p_true == pytest.approx(0.8) and backend.requests == 1
    again = cascade.verify([("FRONTAL epidural  empyema after sinusitis", EMPYEMA)])  # same folded answer
    assert again[0].cache_hit and again[0].verdict == "correct" and backend.requests == 1


def test_judge_failures_become_errors_never_scores():
    backend = ScriptedBackend([ConnectionError("refused"), ChatReply("maybe", None)])
    reward = ClinicalReward()
    reward.verifier = CascadeVerifier(RuleVerifier(), LLMJudge(backend))
    results = reward.score([item("<think>x</think> frontal epidural empyema after sinusitis", EMPYEMA),
                            item("<think>x</think> frontal subdural empyema", EMPYEMA),
                            item("<think>x</think> frontal epidural empyema", EMPYEMA)])
    assert [r.status for r in results] == ["error", "error", "ok"]
    assert "ConnectionError" in results[0].details["error"] and "unreadable" in results[1].details["error"]
    assert results[0].reward is None and results[2].reward == 1.0


def test_verdict_parsing_and_p_true():
    assert parse_verdict("True.") is True and parse_verdict("**False**") is False
    assert parse_verdict("正确") is True and parse_verdict("错误") is False and parse_verdict("Perhaps") is None
    assert p_true_from_logprobs({"True": math.log(0.6), " true": math.log(0.1), "False": math.log(0.1),
                                 "The": math.log(0.2)}) == pytest.approx(0.7 / 0.8)
    assert p_true_from_logprobs({"The": -0.1, "A": -3.0}) is None


# ---------------------------------------------------------------------------------------------------------------
# Issue 11, failing inputs 3-6 at the reward: the answer read is the final one, and a missing part says why.


@pytest.mark.parametrize(("response", "gold"), [
    ("<think>RLQ pain</think>\nDifferential diagnosis: mesenteric adenitis\nFinal diagnosis: acute appendicitis",
     "acute appendicitis"),  # input 3: was 0.1 (the differential was read)
    ("<think>RLQ pain</think>\n**Final diagnosis:**\nAcute appendicitis", "Acute appendicitis"),  # input 4
    ("<think>A</think>\n<think>… diagnosis: myocardial infarction …</think>\nDiagnosis: aortic dissection",
     "aortic dissection"),  # input 5: was 0.1 (read inside the second block)
    ("<think>RLQ pain</think>\n鉴别诊断：肠系膜淋巴结炎\n最终诊断：\n急性阑尾炎", "急性阑尾炎"),
])
def test_the_final_answer_after_the_last_block_is_scored(response, gold):
    (result,) = ClinicalReward().score([item(response, Case("case", gold))])
    assert (result.reward, result.details["missing_reason"]) == (1.0, "")


def test_input6_a_pre_opened_think_block_is_scored_when_the_input_says_so():
    gold = Case("Fever, cough and a lobar consolidation.", "Community-acquired pneumonia")
    completion = "Fever, productive cough, lobar consolidation…\n</think>\nDiagnosis: community-acquired pneumonia"
    opened = RewardInput("…<|im_start|>assistant\n<think>\n", completion, gold.answer, gold, think_opened=True)
    plain = RewardInput("…<|im_start|>assistant\n", completion, gold.answer, gold)  # think_opened defaults False
    with_flag, without = ClinicalReward().score([opened, plain])
    assert (with_flag.reward, with_flag.details["format_ok"]) == (1.0, 1.0)  # was 0.0, "missing thinking"
    assert (without.reward, without.details["missing_thinking"]) == (0.0, 1.0)
    assert "think_opened" in without.details["missing_reason"]


def test_missing_reason_is_reported_as_a_string_detail():
    results = ClinicalReward().score([item("<think>RLQ pain, never closed"), item("<think>x</think>\nDiagnosis:"),
                                      item("<think>x</think>\nDiagnosis: A\n<think>more"), item("")])
    assert [r.details["missing_reason"] for r in results] == [
        "no closing </think>", "only a label with no answer", "<think> reopened after the last </think> and never "
        "closed", "empty response"]
    assert all(r.reward == 0.0 and r.details["missing_answer"] == 1.0 for r in results)
