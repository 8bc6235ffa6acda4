"""A chat template that opens `<think>` itself (issue 11, input 6): detected from the tokenizer, and then reward,
SFT and evaluation read and write completions alike (the completion starts inside the reasoning block)."""

from pathlib import Path

import pytest

from clinical_rl.config import RunConfig
from clinical_rl.config_stages import EvalConfig, EvalModelConfig
from clinical_rl.data.cases import Case
from clinical_rl.data.prompts import prompt_opens_think, render_prompt, template_opens_think
from clinical_rl.eval.runner import judge_replies, model_opens_think
from clinical_rl.llm_client import ChatReply
from clinical_rl.models import embedded_model_dir, train_tiny_tokenizer
from clinical_rl.rewards.base import RewardInput
from clinical_rl.rewards.cascade import CascadeVerifier
from clinical_rl.rewards.clinical import ClinicalReward
from clinical_rl.rewards.rule_verifier import RuleVerifier
from clinical_rl.rewards.server import reward_input
from clinical_rl.rewards.verl_adapter import build_input
from clinical_rl.sft.dataset import SFTRow, encode_row

# DeepSeek-R1-distill's template, shortened: the generation prompt ends with "<think>\n".
R1_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] }}"
    "{% else %}{{ '<｜Assistant｜>' + m['content'] + '<|im_end|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"
)
# Qwen3 with thinking switched off: the block is opened and closed already, so nothing is left open.
QWEN3_NO_THINKING = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n\n</think>\n\n{% endif %}"
)
CASE = Case("Fever, productive cough and a lobar consolidation on the film.", "Community-acquired pneumonia")
COMPLETION = "Fever, cough, lobar consolidation: a typical bacterial picture…\n</think>\nDiagnosis: community-acquired pneumonia"


def _tokenizer(root: Path, name: str, template: str | None):
    from transformers import AutoTokenizer

    directory = train_tiny_tokenizer(["a tiny corpus for a tiny tokenizer <think> </think>"] * 4, root / name, 300)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    if template is not None:
        tokenizer.chat_template = template
        tokenizer.save_pretrained(directory)
    return tokenizer, directory


@pytest.fixture(scope="module")
def r1(tmp_path_factory):
    return _tokenizer(tmp_path_factory.mktemp("r1"), "tokenizer", R1_TEMPLATE)


@pytest.fixture(scope="module")
def chatml(tmp_path_factory):
    return _tokenizer(tmp_path_factory.mktemp("chatml"), "tokenizer", None)  # train_tiny_tokenizer's ChatML


def test_detection_reads_the_template(r1, chatml, tmp_path):
    from transformers import AutoTokenizer

    assert template_opens_think(r1[0]) is True
    assert template_opens_think(chatml[0]) is False
    assert template_opens_think(_tokenizer(tmp_path, "qwen3", QWEN3_NO_THINKING)[0]) is False
    smollm2 = embedded_model_dir()
    if not (smollm2 / "tokenizer_config.json").is_file():
        pytest.skip(f"the SmolLM2 tokenizer is not prepared at {smollm2} (run `clinical-rl prepare-model`)")
    assert template_opens_think(AutoTokenizer.from_pretrained(smollm2)) is False
    # The rendered training prompt agrees with the probe: this is what the RL driver reads off its prompts.
    assert prompt_opens_think(render_prompt(r1[0], CASE)) and not prompt_opens_think(render_prompt(chatml[0], CASE))


def test_sft_does_not_open_the_block_twice(r1, chatml):
    row = SFTRow(CASE.question, "Fever and consolidation.", "Diagnosis: community-acquired pneumonia")
    for (tokenizer, _), opened in ((r1, True), (chatml, False)):
        sample = encode_row(tokenizer, row, max_len=4096)
        text = tokenizer.decode(sample.input_ids)
        after_question = text[text.rindex(CASE.question) :]  # the instruction itself mentions <think> </think>
        target = tokenizer.decode([t for t in sample.labels if t != -100][:-1])  # without the EOS
        assert after_question.count("<think>") == 1 and after_question.count("</think>") == 1
        assert target.startswith(row.thinking if opened else "<think>\n")
        assert target.endswith("</think>\nDiagnosis: community-acquired pneumonia")


def test_the_reward_scores_a_completion_of_the_rendered_prompt(r1, chatml):
    prompt = render_prompt(r1[0], CASE)
    items = [RewardInput(prompt, COMPLETION, CASE.answer, CASE, think_opened=prompt_opens_think(prompt)),
             RewardInput(prompt, COMPLETION, CASE.answer, CASE)]  # a caller that did not pass it on
    assert [r.reward for r in ClinicalReward().score(items)] == [1.0, 0.0]


def test_servers_without_a_tokenizer_read_the_rendered_prompt(r1):
    prompt = render_prompt(r1[0], CASE)
    assert reward_input(prompt, COMPLETION, CASE.answer, "labels[0]").think_opened is True
    assert reward_input("plain prompt", COMPLETION, CASE.answer, "labels[0]").think_opened is False
    assert build_input(COMPLETION, CASE.answer, {"prompt": prompt}).think_opened is True
    messages = [{"role": "user", "content": CASE.question}]  # not rendered: says nothing about the template
    assert build_input(COMPLETION, CASE.answer, {"prompt": messages}).think_opened is False
    assert build_input(COMPLETION, CASE.answer, {"prompt": messages, "think_opened": True}).think_opened is True


def test_evaluation_reads_the_models_template(r1, chatml, monkeypatch):
    cfg = RunConfig()
    assert model_opens_think(EvalModelConfig(label="r1", model="m", tokenizer=str(r1[1])), cfg) is True
    assert model_opens_think(EvalModelConfig(label="unknown endpoint", model="m"), cfg) is False
    monkeypatch.setattr("clinical_rl.models.check_model_dir", lambda path, key: Path(path))
    assert model_opens_think(EvalModelConfig(label="local", path=str(r1[1])), cfg) is True
    assert model_opens_think(EvalModelConfig(label="local", path=str(chatml[1])), cfg) is False

    # Cut off while reasoning: with the flag nothing is read; without it the reasoning would be read as the answer.
    cut = "Fever and consolidation. Diagnosis: community-acquired pneumonia? Let me check the"
    replies = [ChatReply(COMPLETION, None, "stop"), ChatReply(cut, None, "length")]
    verifier = CascadeVerifier(RuleVerifier(), None)
    opened = judge_replies("b", "r1", [CASE, CASE], replies, verifier, EvalConfig(), think_opened=True)
    assert [(p.extracted, p.verdict, p.path) for p in opened] == [
        ("community-acquired pneumonia", "correct", "rule:exact"), (None, "incorrect", "format")]
    plain = judge_replies("b", "r1", [CASE, CASE], replies, verifier, EvalConfig())
    assert plain[1].extracted == "community-acquired pneumonia? Let me check the"
