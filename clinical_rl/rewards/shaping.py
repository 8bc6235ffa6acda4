"""Reward shaping: ClinicalGPT-R1's outcome values and WiNGPT-3.0's cosine length penalty."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, model_validator


class OutcomeValues(BaseModel):
    """1 correct, 0.1 wrong, 0 when the answer does not follow a reasoning block (the paper's values)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    correct: float = 1.0
    wrong: float = 0.1
    no_think: float = 0.0


class LengthPenalty(BaseModel):
    """No penalty up to `start` tokens, rising along a half cosine to `max_penalty` at `end` and beyond."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    start: int = Field(1024, ge=0, description="response length (tokens) where the penalty begins")
    end: int = Field(4096, gt=0, description="length where it reaches max_penalty")
    max_penalty: float = Field(0.5, ge=0.0, description="largest amount subtracted from the reward")

    @model_validator(mode="after")
    def _check(self) -> LengthPenalty:
        if self.end <= self.start:
            raise ValueError(f"length_penalty.end={self.end} must exceed length_penalty.start={self.start}")
        return self

    def __call__(self, length: int) -> float:
        progress = min(1.0, max(0.0, (length - self.start) / (self.end - self.start)))
        return self.max_penalty * (1.0 - math.cos(math.pi * progress)) / 2.0
