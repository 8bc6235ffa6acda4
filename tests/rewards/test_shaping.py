"""WiNGPT-3.0's rollout filters as reward shaping: the n-gram repetition penalty and the think-format check, alone
and summed by ClinicalReward (golden numbers, derivations beside them)."""

import pytest
from pydantic import ValidationError

from clinical_rl.data.cases import Case
from clinical_rl.rewards.answer_format import parse_response
from clinical_rl.rewards.base import RewardInput
from clinical_rl.rewards.clinical import PENALTY_KEYS, ClinicalReward
from clinical_rl.rewards.shaping import (
    MULTIPLE_CLOSES,
    MULTIPLE_OPENS,
    SHORT_REASONING,
    RepetitionPenalty,
    ThinkFormatCheck,
    repeated_ngram_frac,
    word_tokens,
)

CASE = Case("A 19-year-old with migrating right iliac fossa pain.", "Acute appendicitis")
CLEAN = "<think>RLQ pain with rebound tenderness</think>\nacute appendicitis"
# word tokens: pain x6, acute, appendicitis (8) -> 6 trigrams: ppp x4, (p, p, acute), (p, acute, appendicitis);
# 3 distinct -> repeated fraction 1 - 3/6 = 0.5. The second </think> is a stray close (a think-format violation);
# tags are not words, so it does not change the tokens.
LOOPING = "<think>pain pain pain</think> pain pain pain</think>\nacute appendicitis"
SHAPING = {"repetition_penalty": {"n": 3, "threshold": 0.0, "max_penalty": 0.5},
           "think_format": {"penalty": 0.125, "min_think_chars": 20}}


def item(response: str, tokens: int | None = None, think_opened: bool = False) -> RewardInput:
    return RewardInput("prompt", response, CASE.answer, CASE, tokens, think_opened)


# ---------------------------------------------------------------------------------------------------------------
# repeated n-gram fraction


def test_repeated_ngram_frac_golden_numbers():
    tokens = "a b c a b c".split()
    assert repeated_ngram_frac(tokens, 3) == 0.25  # abc, bca, cab, abc: 4 in all, 3 distinct -> 1 - 3/4
    assert repeated_ngram_frac(tokens, 2) == 0.4  # ab, bc, ca, ab, bc: 5 in all, 3 distinct -> 1 - 3/5
    assert repeated_ngram_frac(tokens, 1) == 0.5  # 6 unigrams, 3 distinct
    assert repeated_ngram_frac(tokens, 6) == 0.0  # one 6-gram: nothing to repeat
    assert repeated_ngram_frac(["a", "b"], 3) == 0.0  # fewer than n tokens: no n-gram at all
    assert repeated_ngram_frac([], 3) == 0.0


def test_word_tokens_fold_case_width_punctuation_and_tags():
    assert word_tokens("<think>Pain, PAIN; pain.</think> CRP＝12") == ["pain", "pain", "pain", "crp", "12"]
    assert RepetitionPenalty().frac("a b c a b c") == 0.25
    assert RepetitionPenalty().frac("a b c, A B C!") == 0.25  # the same trigrams once case and commas are folded


def test_chinese_counts_characters_as_tokens():
    # 头 痛 头 痛 头 痛: 头痛头, 痛头痛, 头痛头, 痛头痛 -> 4 trigrams, 2 distinct -> 0.5
    assert word_tokens("头痛，头痛，头痛") == ["头", "痛"] * 3
    assert RepetitionPenalty().frac("头痛，头痛，头痛") == 0.5
    # Mixed text: each character one token, the Latin abbreviation and the number one word each.
    assert word_tokens("患者CRP升高至120") == ["患", "者", "crp", "升", "高", "至", "120"]
    # A plain clinical reasoning: 98 tokens, 96 trigrams, only 右下腹 twice -> 95 distinct -> 1/96, far below 0.3.
    reasoning = ("患者为19岁男性，转移性右下腹痛一天，伴恶心、低热。查体右下腹麦氏点压痛、反跳痛阳性，白细胞升高，"
                 "中性粒细胞比例增高。腹部超声提示阑尾增粗。结合病史、体征和检查，首先考虑急性阑尾炎，"
                 "需要与肠系膜淋巴结炎、右侧输尿管结石相鉴别。")
    assert len(word_tokens(reasoning)) == 98 and RepetitionPenalty().frac(reasoning) == pytest.approx(1 / 96)
    # A loop: 考虑急性阑尾炎 x10 = 70 tokens, 68 trigrams, 7 distinct -> 1 - 7/68
    assert RepetitionPenalty().frac("考虑急性阑尾炎。" * 10) == pytest.approx(1 - 7 / 68)


def test_repetition_penalty_mapping_at_below_and_above_the_threshold():
    penalty = RepetitionPenalty(n=3, threshold=0.2, max_penalty=0.4)
    # 0.4 * clip((f - 0.2) / 0.8, 0, 1)
    assert penalty(0.0) == 0.0 and penalty(0.1) == 0.0 and penalty(0.2) == 0.0
    assert penalty(0.6) == pytest.approx(0.2)  # (0.6 - 0.2) / 0.8 = 0.5 of the way
    assert penalty(1.0) == pytest.approx(0.4)
    assert RepetitionPenalty(threshold=0.0, max_penalty=0.5)(0.25) == 0.125  # threshold 0: max_penalty * f


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"threshold": 1.0}, "less than 1"),
    ({"threshold": -0.1}, "greater than or equal to 0"),
    ({"n": 0}, "greater than or equal to 1"),
    ({"max_penalty": -0.5}, "greater than or equal to 0"),
    ({"treshold": 0.5}, "Extra inputs are not permitted"),
])
def test_bad_repetition_config_is_refused(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        RepetitionPenalty(**kwargs)


def test_bad_configs_are_refused_by_the_reward_naming_the_field():
    with pytest.raises(ValidationError, match=r"repetition_penalty\.threshold\s+Input should be less than 1"):
        ClinicalReward(repetition_penalty={"threshold": 1.0})
    with pytest.raises(ValidationError, match=r"repetition_penalty\.n\s+Input should be greater than or equal to 1"):
        ClinicalReward(repetition_penalty={"n": 0})
    with pytest.raises(ValidationError, match=r"think_format\.penalty\s+Input should be greater than or equal to 0"):
        ClinicalReward(think_format={"penalty": -0.1})
    with pytest.raises(ValidationError, match=r"think_format\.min_think_chars"):
        ClinicalReward(think_format={"min_think_chars": -1})


# ---------------------------------------------------------------------------------------------------------------
# think-format check


@pytest.mark.parametrize(("response", "think_opened", "reason"), [
    (CLEAN, False, ""),
    ("RLQ pain with rebound tenderness</think>\nacute appendicitis", True, ""),  # the template opened <think>
    # two blocks: two openers and two closers
    ("<think>RLQ pain with rebound</think><think>fever and leukocytosis</think>\nacute appendicitis", False,
     f"{MULTIPLE_OPENS}; {MULTIPLE_CLOSES}"),
    # an answer written between two blocks (the one after the last block is read)
    ("<think>RLQ pain with rebound</think>\nDiagnosis: mesenteric adenitis\n<think>fever, leukocytosis, "
     "rebound</think>\nDiagnosis: acute appendicitis", False, f"{MULTIPLE_OPENS}; {MULTIPLE_CLOSES}"),
    ("<think>RLQ pain with rebound</think> tenderness</think>\nacute appendicitis", False, MULTIPLE_CLOSES),
    # the template opened <think> and the policy opened another
    (CLEAN, True, MULTIPLE_OPENS),
    ("<think>ok</think>\nacute appendicitis", False, SHORT_REASONING),  # 2 characters < 20
    ("<think> McBurney  point   tender </think>\nacute appendicitis", False, SHORT_REASONING),  # 8+5+6 = 19
    ("<think>McBurney point tender.</think>\nacute appendicitis", False, ""),  # 8+5+7 = 20 non-space chars: enough
    ("<think>腹痛</think>\n急性阑尾炎", False, SHORT_REASONING),
    ("<think>ok</think></think>\nacute appendicitis", False, f"{MULTIPLE_CLOSES}; {SHORT_REASONING}"),
])
def test_think_format_rules(response, think_opened, reason):
    parsed = parse_response(response, think_opened=think_opened)
    assert parsed.missing == ""  # only format-ok responses are checked
    assert ThinkFormatCheck().violations(response, parsed, think_opened) == reason


def test_think_format_length_rule_can_be_off_and_applies_to_huatuo_headers():
    short = "<think>ok</think>\nacute appendicitis"
    assert ThinkFormatCheck(min_think_chars=0).violations(short, parse_response(short), False) == ""
    huatuo = "## Thinking\nok <think>\n## Final Response\nAcute appendicitis"  # tags mean nothing under headers
    assert ThinkFormatCheck().violations(huatuo, parse_response(huatuo, "huatuo"), False) == SHORT_REASONING


# ---------------------------------------------------------------------------------------------------------------
# ClinicalReward with the terms on


def test_both_terms_on_give_the_golden_reward_for_a_correct_answer():
    (result,) = ClinicalReward(**SHAPING).score([item(LOOPING)])
    # 1 (correct) - 0.5 * 0.5 (repetition, threshold 0) - 0.125 (stray </think>) = 0.625, binary-exact
    assert result.status == "ok" and result.reward == 0.625
    d = result.details
    assert (d["correct"], d["repeated_ngram_frac"], d["repetition_penalty"]) == (1.0, 0.5, 0.25)
    assert (d["think_format_violation"], d["think_format_penalty"], d["think_format_reason"]) == (
        1.0, 0.125, MULTIPLE_CLOSES)
    assert d["length_penalty"] == 0.0

    with_length = ClinicalReward(**SHAPING, length_penalty={"start": 100, "end": 200, "max_penalty": 0.5})
    (result,) = with_length.score([item(LOOPING, tokens=150)])
    assert result.reward == pytest.approx(1 - 0.25 - 0.25 - 0.125)  # the cosine is halfway at 150 tokens: 0.25
    assert result.details["length_penalty"] == pytest.approx(0.25)


def test_a_clean_response_pays_nothing():
    (result,) = ClinicalReward(**SHAPING).score([item(CLEAN)])
    # tokens: rlq pain with rebound tenderness acute appendicitis: 5 trigrams, all distinct -> 0
    assert result.reward == 1.0 and result.details["repeated_ngram_frac"] == 0.0
    assert [result.details[k] for k in PENALTY_KEYS] == [0.0, 0.0, 0.0]
    assert (result.details["think_format_violation"], result.details["think_format_reason"]) == (0.0, "")


def test_off_by_default_the_old_rewards_with_the_measurements_reported():
    results = ClinicalReward().score([item(LOOPING), item(CLEAN), item("<think>pain</think>\nmigraine"),
                                      item("acute appendicitis")])
    assert [r.reward for r in results] == [1.0, 1.0, 0.1, 0.0]
    assert all(r.details["repetition_penalty"] == 0.0 and r.details["think_format_penalty"] == 0.0 for r in results)
    # measured with the default settings (n=3, min_think_chars=20), so they can be watched before turning them on
    assert results[0].details["repeated_ngram_frac"] == 0.5 and results[0].details["think_format_violation"] == 1.0
    assert results[2].details["think_format_reason"] == SHORT_REASONING  # "pain": 4 characters


def test_the_total_is_floored_at_no_think_and_the_floor_never_raises_a_reward():
    # pain x6, migraine -> 5 trigrams: ppp x4, (p, p, migraine); 2 distinct -> 0.6, penalty 0.5 * 0.6 = 0.3
    wrong = "<think>pain pain pain</think> pain pain pain</think>\nmigraine"
    (result,) = ClinicalReward(**SHAPING).score([item(wrong)])
    # 0.1 - 0.3 - 0.125 = -0.325, floored at no_think = 0: a penalised answer ties one without reasoning
    assert result.reward == 0.0 and result.details["correct"] == 0.0
    assert result.details["repeated_ngram_frac"] == pytest.approx(0.6)
    assert (result.details["repetition_penalty"], result.details["think_format_penalty"]) == (
        pytest.approx(0.3), 0.125)  # reported as computed, before the floor
    # wrong already below no_think: not floored (the floor would raise it), so the penalties still act on it
    values = {"correct": 1.0, "wrong": -1.0, "no_think": 0.0}
    (result,) = ClinicalReward(values=values, **SHAPING).score([item(wrong)])
    assert result.reward == pytest.approx(-1.425)  # -1 - 0.3 - 0.125
    values = {"correct": 1.0, "wrong": 0.1, "no_think": -1.0}
    (result,) = ClinicalReward(values=values, **SHAPING).score([item(wrong)])
    assert result.reward == pytest.approx(-0.325)  # above the floor of -1: not clipped


def test_the_length_penalty_alone_is_floored_too():
    # A behaviour change from before the floor: a long wrong answer scored 0.1 - 0.5 = -0.4, below no-think.
    reward = ClinicalReward(length_penalty={"start": 100, "end": 200, "max_penalty": 0.5})
    (result,) = reward.score([item("<think>RLQ pain with rebound tenderness</think>\nmigraine", tokens=300)])
    assert result.reward == 0.0 and result.details["length_penalty"] == pytest.approx(0.5)


def test_every_sample_reports_the_same_keys_and_format_failures_pay_no_penalty():
    responses = [LOOPING, CLEAN, "acute appendicitis", "<think>pain pain pain pain pain pain", ""]
    results = ClinicalReward(**SHAPING).score([item(r) for r in responses])
    assert [r.reward for r in results] == [0.625, 1.0, 0.0, 0.0, 0.0]
    assert len({frozenset(r.details) for r in results}) == 1
    for failed in results[2:]:
        assert [failed.details[k] for k in PENALTY_KEYS] == [0.0, 0.0, 0.0]
        assert (failed.details["think_format_violation"], failed.details["think_format_reason"]) == (0.0, "")
    # repetition is measured on format failures too: an unclosed loop is the case worth seeing
    assert results[3].details["repeated_ngram_frac"] == 0.75  # pain x6: 4 trigrams, 1 distinct
    numeric = {k for k, v in results[0].details.items() if isinstance(v, float)}
    assert {"repeated_ngram_frac", "repetition_penalty", "think_format_violation", "think_format_penalty"} <= numeric
    assert isinstance(results[0].details["think_format_reason"], str)
