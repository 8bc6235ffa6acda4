"""Prompt construction: the think-then-answer instruction (English and Chinese) and the tokenizer's chat template."""

from __future__ import annotations

from typing import Any

from clinical_rl.data.cases import Case
from clinical_rl.rewards.answer_format import prompt_opens_think

THINK_THEN_ANSWER = {
    "en": (
        "You are a careful physician. First reason step by step inside <think> </think>, then give the final "
        "diagnosis on one line after the think block, as 'Diagnosis: <name>'."
    ),
    "zh": "你是一名严谨的医生。请先在 <think> </think> 中逐步推理，然后在思考块之后用一行给出最终诊断，格式为“诊断：<名称>”。",
}
_OPTIONS_HEADER = {"en": "Options:", "zh": "选项："}


def case_text(case: Case) -> str:
    """What the model reads: the case text, and the lettered options of a multiple-choice case."""
    if not case.options:
        return case.question
    options = "\n".join(f"{letter}. {text}" for letter, text in case.options.items())
    return f"{case.question}\n\n{_OPTIONS_HEADER[case.language]}\n{options}"


def case_messages(case: Case, system_prompt: str | None = None) -> list[dict[str, str]]:
    """The conversation a policy sees for a case: the think-then-answer instruction and the case."""
    return [
        {"role": "system", "content": system_prompt or THINK_THEN_ANSWER[case.language]},
        {"role": "user", "content": case_text(case)},
    ]


def render_prompt(tokenizer: Any, case: Case, system_prompt: str | None = None) -> str:
    """Chat-formatted prompt text ending where the assistant starts to answer."""
    return tokenizer.apply_chat_template(case_messages(case, system_prompt), tokenize=False,
                                         add_generation_prompt=True)


_PROBE = "clinical-rl template probe 7f3a"  # text no template adds itself, to find where the user turn ends


def template_opens_think(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template opens the reasoning block in its generation prompt.

    DeepSeek-R1-distill and Qwen3-thinking templates end the generation prompt with `<think>\n`: the completion
    then starts inside the reasoning block and only closes it. Read off the template itself, not guessed from
    the model's name: a probe conversation is rendered with the generation prompt, and what follows the probe's
    user message (end of turn, assistant header, ...) is checked for a trailing opening `<think>`. Reward,
    SFT and evaluation pass the result on as `think_opened` so that all three read completions alike.
    """
    messages = [{"role": "system", "content": "system"}, {"role": "user", "content": _PROBE}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return prompt_opens_think(rendered[rendered.rindex(_PROBE) + len(_PROBE) :])
