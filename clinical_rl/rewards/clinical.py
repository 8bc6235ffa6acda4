"""ClinicalReward: the ClinicalGPT-R1 reward (1 correct / 0.1 wrong / 0 without reasoning) judged by the cascade.

Use it as `reward.cls: clinical_rl.rewards.clinical:ClinicalReward` with `reward.kwargs` validated by
`ClinicalRewardConfig`. Every part of a reward is reported in `details` (logged as `reward/<key>`): format,
correctness, which verifier path decided, cache hits, latency and the length penalty; the string
`missing_reason` says why a thinking or answer counts as missing ("no closing </think>", ...).
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
from clinical_rl.rewards.shaping import LengthPenalty, OutcomeValues


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
        if decision.path == "format":
            return RewardResult(values.no_think, "ok", {**details, "correct": 0.0, "length_penalty": 0.0})
        if decision.error is not None:
            return RewardResult(None, "error", {**details, "error": decision.error})
        if decision.verdict == "undecided" and self.cfg.on_undecided == "error":
            return RewardResult(None, "error", {**details, "error": "undecided by the rules and no judge"})
        correct = decision.verdict == "correct"
        penalty = self._length_penalty(item)
        base = values.correct if correct else values.wrong
        return RewardResult(base - penalty, "ok", {**details, "correct": float(correct), "length_penalty": penalty})

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
