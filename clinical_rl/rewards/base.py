"""The reward contract every reward class meets, and loading one by import path (`module:Class`).

A reward is a number with a status. Anything but `ok` is excluded from the loss and the baseline and counted;
it is never turned into 0 or 0.1 by accident.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from clinical_rl.data.cases import Case

RewardStatus = Literal["ok", "error", "timeout"]


@dataclass(frozen=True)
class RewardInput:
    """What a verifier sees of one sample."""

    prompt: str
    response: str
    reference: str  # the gold answer
    case: Case | None = None  # the whole case (options, ICD-10, language) when the caller has it
    response_tokens: int | None = None  # length of the response in policy tokens, when the caller knows it
    # The chat template that rendered `prompt` already opened `<think>` (R1-distill, Qwen3-thinking), so the
    # response starts inside the reasoning block. Set by whoever rendered the prompt (the driver, from the rendered
    # prompt); the HTTP server and verl adapter, which have no tokenizer, read it off the prompt text.
    think_opened: bool = False
    # A multi-turn episode (clinical_rl/envs/): what the environment recorded (examinations ordered, their cost,
    # turns, how it ended), numbers or strings keyed by name; `response` is then the episode's final reply.
    episode: Mapping[str, float | str] | None = None


@dataclass(frozen=True)
class RewardResult:
    reward: float | None  # None unless status == "ok"
    status: RewardStatus
    details: dict[str, float | str] = field(default_factory=dict)  # numeric parts are logged as reward/<key>

    @staticmethod
    def failed(status: RewardStatus, why: str) -> RewardResult:
        return RewardResult(reward=None, status=status, details={"error": why})

    def check(self) -> RewardResult:
        """Reject malformed results from user plugins instead of training on them."""
        if self.status == "ok" and (self.reward is None or not math.isfinite(self.reward)):
            return RewardResult.failed("error", f"status ok with non-finite reward {self.reward!r}")
        return self


@runtime_checkable
class RewardFn(Protocol):
    """A reward class: constructed with the config's `reward.kwargs`, scores a batch in order."""

    def score(self, batch: list[RewardInput]) -> list[RewardResult]: ...


def load_reward_class(path: str, key: str = "reward.cls") -> type:
    """Import `module:Class`; the error names the config key and what was missing."""
    module_name, sep, class_name = path.partition(":")
    if not sep or not module_name or not class_name:
        raise ValueError(f"{key}: {path!r} is not of the form 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"{key}: cannot import module {module_name!r} ({err})") from err
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f"{key}: module {module_name!r} has no attribute {class_name!r}")
    if not callable(getattr(cls, "score", None)):
        raise ValueError(f"{key}: {path} has no score(batch) method")
    return cls
