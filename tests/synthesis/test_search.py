"""The synthesis search, every branch, against a scripted chat client and a scripted verifier."""

import json
from collections.abc import Sequence

import pytest

from clinical_rl.data.cases import Case
from clinical_rl.llm_client import ChatReply
from clinical_rl.rewards.cascade import CascadeVerifier
from clinical_rl.rewards.rule_verifier import RuleVerifier
from clinical_rl.synthesis.search import SearchConfig, cascade_verify, parse_chain, search_case
from clinical_rl.synthesis.templates import GUIDED, INITIAL, NATURAL_THINKING, STRATEGIES

CASE = Case("A 70-year-old with fever, productive cough and crackles at the right base.", "Pneumonia", id="c1")
NATURAL, FORMAL = "Hmm, fever and cough.\nWait, crackles too.", "Diagnosis: Pneumonia\nFocal crackles and fever."


class ScriptedChat:
    """Returns the scripted replies in order (an Exception is returned as that call's failure); records prompts."""

    def __init__(self, replies: Sequence[str | Exception]) -> None:
        self.replies, self.prompts = list(replies), []

    def chat(self, conversations, max_tokens, temperature=0.0, top_logprobs=0):
        out = []
        for conversation in conversations:
            self.prompts.append(conversation[-1]["content"])
            reply = self.replies.pop(0)
            out.append(reply if isinstance(reply, Exception) else ChatReply(reply, finish_reason="stop"))
        return out


def chain(diagnosis: str) -> str:
    """A JSON chain reply concluding `diagnosis`, fenced and with chatter around it as models write them."""
    steps = [{"action": "Inner Thinking", "title": "Findings", "content": "Fever {and} cough."},
             {"action": "Final Conclusion", "content": f"It fits best.\nDiagnosis: {diagnosis}"},
             {"action": "Verification", "content": "Checked against the findings."}]
    return f"Here it is:\n```json\n{json.dumps({'CoT': steps})}\n```\nDone {{"


def verify(conclusion: str, case: Case) -> str:
    return "correct" if f"Diagnosis: {case.answer}" in conclusion else "incorrect"


def run(replies, cfg=None, case=CASE):
    client = ScriptedChat(replies)
    result = search_case(case, client, verify, cfg or SearchConfig(), synthesizer="scripted")
    assert not client.replies, "every scripted reply is consumed"
    return result, client.prompts


def test_right_first_time_is_init_then_two_reformat_calls():
    result, prompts = run([chain("Pneumonia"), NATURAL, FORMAL])
    assert (result.status, result.thinking, result.response, result.guided) == ("done", NATURAL, FORMAL, False)
    lineage = result.lineage
    assert lineage["strategy_path"] == ["init"] and lineage["attempts"] == 1 and lineage["calls"] == 3
    assert lineage["verdicts"] == ["correct"] and lineage["archived_branches"] == [] and lineage["errors"] == []
    assert lineage["synthesizer"] == "scripted" and lineage["started_at"] <= lineage["finished_at"]
    assert lineage["approx_tokens_in"] > 0 and lineage["approx_tokens_out"] > 0
    assert "Fever {and} cough." in prompts[1] and NATURAL in prompts[2]  # thinking from the chain, response from it


@pytest.mark.parametrize("k", [1, 2, 3])
def test_right_after_strategy_k(k):
    result, prompts = run([chain("Asthma")] * k + [chain("Pneumonia"), NATURAL, FORMAL])
    path = result.lineage["strategy_path"]
    assert result.status == "done" and len(path) == k + 1 and path[0] == "init" and path[1] != "backtracking"
    assert result.lineage["verdicts"] == ["incorrect"] * k + ["correct"]
    for depth, (strategy, prompt) in enumerate(zip(path[1:], prompts[1:]), start=1):
        assert STRATEGIES[strategy]["en"] in prompt
        # The chain so far (init plus every earlier strategy), each rejected Verification dropped.
        earlier = prompt.split("<earlier_reasoning>")[1].split("</earlier_reasoning>")[0]
        assert earlier.count('"Final Conclusion"') == depth and '"Verification"' not in earlier


def test_restart_archives_the_failed_branch():
    result, _ = run([chain("Asthma"), chain("Asthma"), chain("Pneumonia"), NATURAL, FORMAL],
                    SearchConfig(max_depth=1, max_attempts=2))
    lineage = result.lineage
    assert result.status == "done" and lineage["attempts"] == 2 and lineage["strategy_path"] == ["init"]
    assert len(lineage["archived_branches"]) == 1 and lineage["archived_branches"][0][0] == "init"


def test_guided_attempt_sees_the_reference_and_earlier_prompts_do_not():
    result, prompts = run([chain("Asthma"), chain("Asthma"), chain("Pneumonia"), NATURAL, FORMAL],
                          SearchConfig(max_depth=1, max_attempts=1))
    assert result.status == "done" and result.guided and result.lineage["guided"]
    assert result.lineage["strategy_path"][-1] == "guided" and len(result.lineage["strategy_path"]) == 3
    assert GUIDED["en"].split("{")[0] in prompts[2] and "Pneumonia" in prompts[2]
    assert all("Pneumonia" not in prompt for prompt in prompts[:2])


def test_all_failed_records_every_branch():
    result, _ = run([chain("Asthma")] * 9)  # 2 branches of init + 3 strategies, then the guided attempt
    lineage = result.lineage
    assert (result.status, result.thinking, result.response) == ("failed", None, None)
    assert lineage["calls"] == 9 and lineage["verdicts"] == ["incorrect"] * 9 and lineage["strategy_path"] == []
    assert [len(branch) for branch in lineage["archived_branches"]] == [4, 4, 5]
    assert all(branch[1] != "backtracking" for branch in lineage["archived_branches"])


def test_undecided_is_not_acceptance():
    client = ScriptedChat([chain("Pneumonia")] * 3)
    result = search_case(CASE, client, lambda conclusion, case: "undecided", SearchConfig(max_depth=1, max_attempts=1))
    assert result.status == "failed" and result.lineage["verdicts"] == ["undecided"] * 3


def test_unparseable_reply_and_backend_exception_are_failed_steps():
    result, _ = run(["I think it is asthma.", RuntimeError("boom"), chain("Pneumonia"), NATURAL, FORMAL],
                    SearchConfig(max_depth=3, max_attempts=2))
    lineage = result.lineage
    assert result.status == "done" and result.guided and lineage["calls"] == 5
    assert lineage["archived_branches"] == [["init"], ["init"]] and lineage["strategy_path"] == ["init", "guided"]
    assert len(lineage["errors"]) == 2
    assert "attempt 1 init: unparseable chain" in lineage["errors"][0]
    assert lineage["errors"][1] == "attempt 2 init: RuntimeError: boom"


def test_failed_reformat_fails_the_case():
    result, _ = run([chain("Pneumonia"), RuntimeError("down")])
    assert (result.status, result.thinking, result.response) == ("failed", None, None)
    assert result.lineage["strategy_path"] == ["init"] and "reformat thinking" in result.lineage["errors"][0]


def test_chinese_case_uses_chinese_templates():
    case = Case("患者发热、咳嗽、右下肺湿啰音。", "肺炎", id="zh1", language="zh")
    result, prompts = run([chain("Asthma"), chain("肺炎"), "嗯，发热咳嗽。", "诊断：肺炎"], case=case)
    assert result.status == "done"
    assert INITIAL["zh"].split("<")[0] in prompts[0]
    assert STRATEGIES[result.lineage["strategy_path"][1]]["zh"] in prompts[1]
    assert NATURAL_THINKING["zh"].split("<")[0] in prompts[2]


def test_same_seed_same_strategies_and_other_seeds_differ():
    def branches(seed):
        return run([chain("Asthma")] * 9, SearchConfig(seed=seed))[0].lineage["archived_branches"]

    assert branches(0) == branches(0)
    assert len({json.dumps(branches(seed)) for seed in range(6)}) > 1


def test_parse_chain_takes_the_first_cot_object():
    steps = parse_chain('Sure {not json} ```json\n{"CoT": [{"action": "Final Conclusion", "content": "a\nb {x}"}]}```')
    assert steps == [{"action": "Final Conclusion", "content": "a\nb {x}"}]
    for bad in ["no json", '{"CoT": "text"}', '{"CoT": [{"action": "Inner Thinking", "content": "x"}]}']:
        with pytest.raises(ValueError):
            parse_chain(bad)


def test_cascade_verify_reads_the_diagnosis_line():
    verify_case = cascade_verify(CascadeVerifier(RuleVerifier(diseases=[])))
    assert verify_case("Fever and crackles.\nDiagnosis: Pneumonia", CASE) == "correct"
