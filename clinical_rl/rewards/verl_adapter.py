"""The configured reward class as verl's `custom_reward_function` (`compute_score`).

    reward.custom_reward_function.path=/path/to/clinical_rl/rewards/verl_adapter.py
    reward.custom_reward_function.name=compute_score

The reward comes from `reward.cls` / `reward.kwargs` of the YAML config named by `CLINICAL_RL_REWARD_CONFIG`
(default: `RewardConfig()`, the think-then-answer reward), built once per process and run through `RewardActor`, so
`reward.timeout_s` / `reward.max_retries` apply. A sample that still fails raises `RuntimeError`: verl never
sees a made-up 0. A chat template that opens `<think>` in its generation prompt (R1-distill): set
`extra_info.think_opened`, or pass the rendered prompt string as `extra_info.prompt`, so the response is read as
starting inside the reasoning block.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

from clinical_rl.config import RewardConfig
from clinical_rl.config_files import load_config
from clinical_rl.rewards.answer_format import prompt_opens_think
from clinical_rl.rewards.base import RewardInput
from clinical_rl.rewards.server import case_from_fields, numeric_details, reward_input

CONFIG_ENV = "CLINICAL_RL_REWARD_CONFIG"
# extra_info keys that describe the case; verl adds others (index, split, num_turns, ...) which are ignored.
CASE_KEYS = ("question", "id", "options", "answer_letter", "icd10", "department", "language", "source")

_lock = threading.Lock()  # verl calls compute_score from a thread pool; RewardActor keeps per-call state
_actors: dict[str | None, Any] = {}


def _actor():
    from clinical_rl.rewards.guard import RewardActor

    path = os.environ.get(CONFIG_ENV) or None
    if path not in _actors:
        cfg = load_config(path).reward if path else RewardConfig()
        _actors[path] = RewardActor(cfg)
    return _actors[path]


def _prompt(extra_info: Mapping[str, Any]) -> str:
    prompt = extra_info.get("prompt", "")
    if isinstance(prompt, list):  # chat messages
        prompt = "\n".join(str(m.get("content", "")) if isinstance(m, Mapping) else str(m) for m in prompt)
    if not isinstance(prompt, str):
        raise ValueError(f"extra_info.prompt: must be a string or chat messages, got {type(prompt).__name__}")
    return prompt


def build_input(solution_str: str, ground_truth: Any, extra_info: Mapping[str, Any] | None) -> RewardInput:
    """A `RewardInput` from verl's arguments; case fields come from `extra_info` or a JSON/dict ground truth."""
    extra_info = extra_info or {}
    prompt = _prompt(extra_info)
    opened = _think_opened(extra_info)
    fields = {k: extra_info[k] for k in CASE_KEYS if extra_info.get(k) is not None}
    plain = isinstance(ground_truth, str) and ground_truth.strip() and not ground_truth.lstrip().startswith("{")
    if fields and plain:
        case = case_from_fields({"answer": ground_truth, **fields}, prompt, "extra_info")
        return RewardInput(prompt=prompt, response=solution_str, reference=case.answer, case=case,
                           think_opened=opened)
    return reward_input(prompt, solution_str, ground_truth, "ground_truth", think_opened=opened)


def _think_opened(extra_info: Mapping[str, Any]) -> bool:
    """`extra_info.think_opened` when given; else whether a rendered prompt string ends in `<think>`. Chat
    messages are not rendered, so they say nothing about the template: False unless the key is set."""
    if "think_opened" in extra_info:
        return bool(extra_info["think_opened"])
    prompt = extra_info.get("prompt")
    return isinstance(prompt, str) and prompt_opens_think(prompt)


def compute_score(
    data_source: str, solution_str: str, ground_truth: Any, extra_info: Mapping[str, Any] | None = None, **kwargs: Any
) -> dict[str, float]:
    """`{"score": reward, **numeric details}`; raises `RuntimeError` when the reward is not `ok`.

    `kwargs` takes what verl may add (reward_kwargs, reward router address); the reward class does not use them.
    """
    item = build_input(solution_str, ground_truth, extra_info)
    with _lock:
        actor = _actor()
        (result,) = actor.score([item])
    if result.status != "ok":
        raise RuntimeError(
            f"clinical_rl reward {actor.cfg.cls} ({data_source}): {result.status}: {result.details.get('error', '')}"
        )
    return {**numeric_details(result), "score": float(result.reward)}
