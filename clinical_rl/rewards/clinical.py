"""ClinicalReward: the ClinicalGPT-R1 reward (1 correct / 0.1 wrong / 0 without reasoning) judged by the cascade.

Use it as `reward.cls: clinical_rl.rewards.clinical:ClinicalReward` with `reward.kwargs` validated by
`ClinicalRewardConfig`. Every part of a reward is reported in `details` (logged as `reward/<key>`): format,
correctness, which verifier path decided, cache hits, latency and the shaping terms; the string
`missing_reason` says why a thinking or answer counts as missing ("no closing </think>", ...).

Shaping (all optional, off by default): the reward of a response whose format is ok is

    shaped = base - length_penalty - repetition_penalty - think_format_penalty
    reward = max(shaped, no_think) if base > no_think else shaped

with base the verifier's `correct` or `wrong` value. The floor is deliberate: penalties never take a formatted
answer below one that skipped the reasoning, else the cheapest way to escape them would be to stop thinking (with
the paper's 1 / 0.1 / 0, a penalised wrong answer ties a no-think one at 0 and never goes below it). A base already
at or below `no_think` (values that rank a wrong answer under no reasoning) is not floored, so the penalties still
act on it and the floor never raises a reward. The penalty details report each term as computed, before the floor.
The measurements `repeated_ngram_frac` and `think_format_violation` are reported for every sample, with the default
settings when a term is off, so they can be watched before a penalty is turned on.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from clinical_rl.config import JUDGE_ACTOR_NAME
from clinical_rl.data.cases import Case
from clinical_rl.rewards.answer_format import AnswerFormat, ParsedResponse, parse_response
from clinical_rl.rewards.base import RewardInput, RewardResult
from clinical_rl.rewards.cascade import CascadeVerifier, Decision
from clinical_rl.llm_client import ChatBackend, EngineChat, OpenAIChat
from clinical_rl.rewards.judge import LLMJudge
from clinical_rl.rewards.rule_verifier import RuleVerifier
from clinical_rl.rewards.shaping import LengthPenalty, OutcomeValues, RepetitionPenalty, ThinkFormatCheck

# The shaping terms subtracted from a format-ok reward; every result of status ok reports each of them.
PENALTY_KEYS = ("length_penalty", "repetition_penalty", "think_format_penalty")


class JudgeConfig(BaseModel):
    """The LLM judge: an OpenAI-compatible endpoint (OpenAI, `vllm serve`) or a rollout-engine actor in the cluster."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    backend: Literal["openai", "ray_engine"] = Field("openai", description="HTTP endpoint or a named Ray actor")
    model: str = Field("", description="openai: the model name the endpoint serves")
    actor_name: str = Field(JUDGE_ACTOR_NAME, description="ray_engine: name of the judge engine actor")
    base_url: str | None = Field(None, description="e.g. http://127.0.0.1:8000/v1; None: api.openai.com")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the key")
    timeout_s: float = Field(30.0, gt=0, description="per-request timeout")
    max_retries: int = Field(2, ge=0, description="retries with exponential backoff per request")
    max_in_flight: int = Field(8, ge=1, description="openai: concurrent requests per reward actor")
    threshold: float = Field(0.5, gt=0, lt=1, description="P(True) at or above which the answer is correct")
    use_logprobs: bool = Field(True, description="read P(True) from logprobs (else parse the reply text)")


class ClinicalRewardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    values: OutcomeValues = OutcomeValues()
    answer_format: AnswerFormat = Field("think", description="think (<think>...</think>), huatuo or auto")
    judge: JudgeConfig | None = Field(None, description="LLM judge for what the rules leave undecided")
    on_undecided: Literal["incorrect", "error"] = Field(
        "incorrect", description="without a judge: score undecided answers as wrong, or fail them (status error)"
    )
    length_penalty: LengthPenalty | None = Field(None, description="WiNGPT cosine length penalty (tokens)")
    repetition_penalty: RepetitionPenalty | None = Field(
        None, description="penalty on the repeated word n-gram fraction (WiNGPT filter, Yeo et al. 2025)")
    think_format: ThinkFormatCheck | None = Field(
        None, description="penalty for a readable but malformed think block (WiNGPT format filter)")
    fuzzy_threshold: float = Field(90.0, ge=0, le=100, description="rapidfuzz ratio for near-identical answers")
    min_overlap: float = Field(0.12, ge=0, le=1, description="content overlap below which answers differ")
    cache_size: int = Field(100_000, ge=0, description="verdicts kept (LRU)")


class ClinicalReward:
    """Parse the response, verify its final answer with the cascade, shape the reward."""

    def __init__(self, **kwargs: object) -> None:
        self.cfg = ClinicalRewardConfig.model_validate(kwargs)
        judge = build_judge(self.cfg.judge) if self.cfg.judge is not None else None
        rule = RuleVerifier(fuzzy_threshold=self.cfg.fuzzy_threshold, min_overlap=self.cfg.min_overlap)
        self.verifier = CascadeVerifier(rule, judge, self.cfg.cache_size)
        # What measures repetition and think structure: the configured term, or its defaults when it is off.
        self._repetition = self.cfg.repetition_penalty or RepetitionPenalty()
        self._think_check = self.cfg.think_format or ThinkFormatCheck()

    def score(self, batch: list[RewardInput]) -> list[RewardResult]:
        parsed = [parse_response(item.response, self.cfg.answer_format, think_opened=item.think_opened)
                  for item in batch]
        to_verify = [i for i, p in enumerate(parsed) if not p.missing]
        decisions = self.verifier.verify([(parsed[i].answer or "", _case_of(batch[i])) for i in to_verify])
        decided = dict(zip(to_verify, decisions))
        return [self._result(item, p, decided.get(i)) for i, (item, p) in enumerate(zip(batch, parsed))]

    def _result(self, item: RewardInput, parsed: ParsedResponse, decision: Decision | None) -> RewardResult:
        values = self.cfg.values
        missing = parsed.missing
        details: dict[str, float | str] = {
            "format_ok": float(not missing),
            "missing_thinking": float(missing in ("thinking", "both")),
            "missing_answer": float(missing in ("answer", "both")),
            "missing_reason": parsed.reason,  # why, e.g. "no closing </think>" ("" when nothing is missing)
        }
        if decision is None:  # the format rule decides (no reasoning first, or no answer after it): no verifier
            decision = Decision("incorrect", "format")
        # Every sample reports the same keys (verl reads the key set off the first sample).
        details |= {
            "undecided": float(decision.path == "judge" or decision.verdict == "undecided"),
            "judge_used": float(decision.path == "judge" and not decision.cache_hit),
            "cache_hit": float(decision.cache_hit),
            "latency_s": decision.latency_s,
            "path": decision.path,
        }
        measures = self._measures(item, parsed)
        details |= measures
        if decision.path == "format":
            return RewardResult(values.no_think, "ok", {**details, "correct": 0.0, **dict.fromkeys(PENALTY_KEYS, 0.0)})
        if decision.error is not None:
            return RewardResult(None, "error", {**details, "error": decision.error})
        if decision.verdict == "undecided" and self.cfg.on_undecided == "error":
            return RewardResult(None, "error", {**details, "error": "undecided by the rules and no judge"})
        correct = decision.verdict == "correct"
        base = values.correct if correct else values.wrong
        penalties = self._penalties(item, measures)
        # The one place the shaping terms are summed; the floor is explained in the module docstring.
        shaped = base - sum(penalties.values())
        reward = max(shaped, values.no_think) if base > values.no_think else shaped
        return RewardResult(reward, "ok", {**details, "correct": float(correct), **penalties})

    def _measures(self, item: RewardInput, parsed: ParsedResponse) -> dict[str, float | str]:
        """Repetition of every response (a cut-off loop is worth seeing too) and, when the format is ok, which
        think-structure rules it breaks; format failures report no violation (`missing_reason` says what failed)."""
        reason = "" if parsed.missing else self._think_check.violations(item.response, parsed, item.think_opened)
        return {
            "repeated_ngram_frac": self._repetition.frac(item.response),
            "think_format_violation": float(bool(reason)),
            "think_format_reason": reason,  # which rule fired, e.g. "more than one </think>" ("" when none)
        }

    def _penalties(self, item: RewardInput, measures: dict[str, float | str]) -> dict[str, float]:
        """Each configured shaping term's amount for a format-ok sample (0.0 for a term that is off)."""
        repetition, think = self.cfg.repetition_penalty, self.cfg.think_format
        return {
            "length_penalty": self._length_penalty(item),
            "repetition_penalty": repetition(float(measures["repeated_ngram_frac"])) if repetition else 0.0,
            "think_format_penalty": think.penalty * float(measures["think_format_violation"]) if think else 0.0,
        }

    def _length_penalty(self, item: RewardInput) -> float:
        if self.cfg.length_penalty is None:
            return 0.0
        if item.response_tokens is None:
            raise ValueError("length_penalty needs RewardInput.response_tokens")
        return self.cfg.length_penalty(item.response_tokens)


def build_judge(j: JudgeConfig) -> LLMJudge:
    """The LLM judge a `JudgeConfig` describes (also used by evaluation)."""
    backend: ChatBackend
    if j.backend == "ray_engine":
        backend = EngineChat(name=j.actor_name, timeout_s=j.timeout_s)
    elif not j.model:
        raise ValueError("judge.model is required for backend openai")
    else:
        backend = OpenAIChat(j.model, j.base_url, j.api_key_env, j.timeout_s, j.max_retries, j.max_in_flight)
    return LLMJudge(backend, j.threshold, j.use_logprobs)


def _case_of(item: RewardInput) -> Case:
    return item.case if item.case is not None else Case(question=item.prompt, answer=item.reference)
