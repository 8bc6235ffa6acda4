"""Prompt construction: the think-before-answer instruction and the tokenizer's chat template."""

from __future__ import annotations

from typing import Any

THINK_THEN_ANSWER = (
    "You are a careful physician. First reason step by step inside <think> </think>, then give the final "
    "diagnosis on one line after the think block, as 'Diagnosis: <name>'."
)


def render_prompt(tokenizer: Any, question: str, system_prompt: str | None = None) -> str:
    """Chat-formatted prompt text ending where the assistant starts to answer."""
    messages = [
        {"role": "system", "content": system_prompt or THINK_THEN_ANSWER},
        {"role": "user", "content": question},
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
