"""The diagnostic-chain episode (requests, observations, turn limit, summary) and its reward."""

import json
import pickle

import pytest

from clinical_rl.envs.chain_cases import ChainCase, Exam
from clinical_rl.envs.diagnostic_chain import TOOL_SCHEMA, DiagnosticChainConfig, Episode
from clinical_rl.envs.reward import DiagnosticChainReward
from clinical_rl.rewards.base import RewardInput

CASE = ChainCase(
    question="A 68-year-old man presents with cough productive of rusty sputum.",
    answer="Community-acquired pneumonia", id="t-1", icd10="J18.9", exams=(
        Exam("physical_exam", "physical examination", "physical", "dullness to percussion at the right base"),
        Exam("chest_x_ray", "chest X-ray", "imaging", "right lower lobe consolidation"),
        Exam("cbc", "complete blood count", "lab", "white cell count 16 x 10^9/L"),
        Exam("other:sputum_gram", "Sputum Gram stain", "lab", "Gram-positive diplococci"),
    ))
ZH = ChainCase(question="患者，男，68岁。因咳嗽、咳铁锈色痰就诊。", answer="社区获得性肺炎", language="zh", id="t-zh",
               exams=(Exam("cbc", "血常规", "lab", "白细胞16×10^9/L"),))
MORE = "You may order more examinations or give your final diagnosis."
LAST = "Your next reply is the last one: give your final diagnosis."
HELP = ('Write <request>exam A; exam B</request> or <tool_call>{"name": "order_examinations", "arguments": '
        '{"examinations": ["exam A", "exam B"]}}</tool_call>.')
THINK = "<think>The sputum, the dull base and the consolidation point to a lobar bacterial infection.</think>\n"


def test_scripted_episode_observations_summary_and_reward():
    episode = Episode(CASE)
    assert episode.first_message().startswith(CASE.question + "\n\nBefore giving a diagnosis you may order")
    assert episode.step("<think>Image the chest.</think>\n<request>CXR; physical exam; CT head; "
                        "unobtainium scan</request>") == (
        "Examination results:\nchest X-ray: right lower lobe consolidation\n"
        "physical examination: dullness to percussion at the right base\n"
        "CT head: not performed or not available\nunobtainium scan: unknown examination\n" + MORE)
    call = {"name": "order_examinations", "arguments": {"examinations": ["FBC", "sputum gram stain", "chest xray",
                                                                         "final diagnosis"]}}
    assert episode.step(f"<tool_call>{json.dumps(call)}</tool_call>") == (
        "Examination results:\ncomplete blood count: white cell count 16 x 10^9/L\n"
        "Sputum Gram stain: Gram-positive diplococci\n"
        "chest X-ray: right lower lobe consolidation (already reported)\n"
        "final diagnosis: refused: only examinations can be ordered; the diagnosis is yours to make\n" + MORE)
    reply = THINK + "Diagnosis: Community-acquired pneumonia"
    assert episode.step(reply) is None
    with pytest.raises(RuntimeError, match="is over"):
        episode.step(reply)
    summary = episode.summary()
    assert summary == {
        "case_id": "t-1", "turns": 3.0, "requests": 8.0, "exams_ordered": 5.0, "info_requests": 4.0,
        "not_performed": 1.0, "unknown": 1.0, "repeated": 1.0, "refused": 1.0, "malformed_turns": 0.0,
        "useless_requests": 4.0, "cost": 8.0, "max_invasiveness": 1.0, "cost_penalty": 0.01, "no_exam_penalty": 0.0,
        "ended_by": "answered", "final_reply": reply}
    # cost: chest X-ray 3 + physical 0 + CT head 3 (ordered, not performed) + CBC 1 + sputum Gram stain 1 = 8
    [result] = DiagnosticChainReward().score([RewardInput("", reply, CASE.answer, CASE, episode=summary)])
    assert result.status == "ok" and result.reward == pytest.approx(1.0 - 0.08)
    assert {k: result.details[k] for k in ("correct", "exams", "cost", "info_requests", "useless_requests",
                                           "turns", "ended_by_max_turns", "chain_penalty")} == {
        "correct": 1.0, "exams": 5.0, "cost": 8.0, "info_requests": 4.0, "useless_requests": 4.0, "turns": 3.0,
        "ended_by_max_turns": 0.0, "chain_penalty": pytest.approx(0.08)}


@pytest.mark.parametrize("reply, why", [
    ("<request>CBC", "<request> has no closing </request>"),
    ("<tool_call>{\"name\": \"order_examinations\"", "<tool_call> has no closing </tool_call>"),
    ("<tool_call>{name: CBC}</tool_call>", "the tool call is not valid JSON"),
    ('<tool_call>{"name": "get_weather", "arguments": {"examinations": ["CBC"]}}</tool_call>',
     'the tool call must name order_examinations with arguments {"examinations": [names]}'),
    ("<request> ; </request>", "it names no examination"),
    ('<tool_call>{"name": "order_examinations", "arguments": {"examinations": []}}</tool_call>',
     "it names no examination"),
    ("<request>CBC; CRP; ESR</request>", "it names 3 examinations, more than the 2 allowed per request"),
])
def test_malformed_requests_get_the_format_and_count_as_a_turn(reply, why):
    episode = Episode(CASE, DiagnosticChainConfig(max_exams_per_turn=2))
    assert episode.step(reply) == f"Your request could not be read: {why}. {HELP}\n{MORE}"
    summary = episode.summary()
    assert (summary["turns"], summary["malformed_turns"], summary["cost"], summary["ended_by"]) == (1.0, 1.0, 0.0, "")


def test_arguments_as_a_json_string_and_both_forms_in_one_reply():
    episode = Episode(CASE)
    call = json.dumps({"name": "order_examinations", "arguments": json.dumps({"examinations": ["CBC"]})})
    assert episode.step(f"<request>CXR</request>\n<tool_call>{call}</tool_call>") == (
        "Examination results:\nchest X-ray: right lower lobe consolidation\n"
        "complete blood count: white cell count 16 x 10^9/L\n" + MORE)


def test_max_turns_ends_the_episode_with_the_last_reply():
    episode = Episode(CASE, DiagnosticChainConfig(max_turns=2))
    assert episode.step("<request>CBC</request>").endswith(LAST)
    assert episode.step("<request>CXR</request>") is None  # not served: the turns are used up
    summary = episode.summary()
    assert (summary["ended_by"], summary["final_reply"], summary["cost"]) == ("max_turns", "<request>CXR</request>",
                                                                              1.0)
    [result] = DiagnosticChainReward().score([RewardInput("", summary["final_reply"], CASE.answer, CASE,
                                                          episode=summary)])
    assert (result.reward, result.details["ended_by_max_turns"], result.details["format_ok"]) == (0.0, 1.0, 0.0)


def test_a_request_inside_the_reasoning_is_not_an_order():
    episode = Episode(CASE)
    assert episode.step("<think>Maybe <request>CBC</request>?</think>\nDiagnosis: pneumonia") is None
    assert episode.summary()["ended_by"] == "answered" and episode.summary()["requests"] == 0.0


def test_zh_case_with_zh_names():
    episode = Episode(ZH)
    assert "<request>" in episode.first_message() and "诊断：<名称>" in episode.first_message()
    assert episode.step("<request>血常规；胸片；无名检查</request>") == (
        "检查结果：\n血常规：白细胞16×10^9/L\n胸片：未做该项检查或无结果\n无名检查：无法识别的检查项目\n"
        "你可以继续申请检查，或给出最终诊断。")
    assert episode.step("<request>诊断</request>") == (
        "检查结果：\n诊断：不予提供：只能申请检查，诊断需由你自己作出\n你可以继续申请检查，或给出最终诊断。")
    assert episode.step("<request>CBC</request>").endswith("下一次回复是最后一次，请给出最终诊断。")  # 3 of 4


def test_a_gold_name_in_a_record_is_withheld_and_the_episode_pickles():
    case = ChainCase(question="q", answer="Asthma", exams=(Exam("spirometry", "spirometry", "lab",
                                                                 "reversible obstruction, consistent with asthma"),))
    episode = pickle.loads(pickle.dumps(Episode(case)))
    assert episode.step("<request>spirometry</request>") == (
        "Examination results:\nspirometry: reversible obstruction, consistent with [withheld]\n" + MORE)


@pytest.mark.parametrize("cost, ordered, correct, expected", [
    (8.0, 5.0, True, 0.92),     # 1 - 0.01 * 8
    (8.0, 5.0, False, 0.02),    # 0.1 - 0.08
    (20.0, 5.0, False, 0.0),    # 0.1 - 0.2 floored at no_think
    (0.0, 0.0, True, 0.5),      # no_exam_penalty 0.5 from the kwargs
])
def test_reward_penalties_and_floor(cost, ordered, correct, expected):
    reward = DiagnosticChainReward(no_exam_penalty=0.5)
    reply = THINK + ("Diagnosis: Community-acquired pneumonia" if correct else "Diagnosis: Pulmonary embolism")
    summary = Episode(CASE).summary() | {"cost": cost, "exams_ordered": ordered, "final_reply": reply}
    [result] = reward.score([RewardInput("", reply, CASE.answer, CASE, episode=summary)])
    assert result.status == "ok" and result.reward == pytest.approx(expected)


def test_reward_errors_without_an_episode_and_tool_schema_shape():
    reward = DiagnosticChainReward(clinical={"answer_format": "think"})
    no_episode, bad = reward.score([RewardInput("", "x", "y"), RewardInput("", "x", "y", episode={"turns": 1.0})])
    assert (no_episode.status, no_episode.reward) == ("error", None)
    assert no_episode.details["error"] == ("no episode: DiagnosticChainReward scores multi-turn episodes "
                                           "(RewardInput.episode is None)")
    assert bad.details["error"] == ("episode summary lacks numeric exams_ordered, cost, info_requests, "
                                    "useless_requests, malformed_turns")
    assert TOOL_SCHEMA["function"]["name"] == "order_examinations"
    assert TOOL_SCHEMA["function"]["parameters"]["required"] == ["examinations"]


def test_config_is_strict():
    with pytest.raises(ValueError, match="extra"):
        DiagnosticChainConfig(name="diagnostic_chain", max_tunrs=3)
    with pytest.raises(ValueError, match="every category"):
        DiagnosticChainConfig(costs={"lab": 1.0})
