"""LLM-judge verifier: asks a judge model whether a final answer names the reference diagnosis.

The prompt asks for one word, True or False (HuatuoGPT-o1's check; WiNGPT's verifier in spirit). When the backend
returns logprobs, the verdict is P(True) = p(True) / (p(True) + p(False)) over the first token's top candidates,
compared with a threshold; otherwise the reply text is parsed. A reply that is neither is a parse failure, which
the reward turns into status `error`, never into a guess.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

JUDGE_PROMPTS: dict[str, str] = {
    "en": (
        "You are an experienced physician checking a student's diagnosis against the reference.\n"
        "Reference diagnosis: {reference}\n"
        "Student's final answer: {answer}\n"
        "Does the student's answer name the same diagnosis as the reference? Synonyms, abbreviations and more "
        "specific forms of the same disease count as the same; a different disease, or only a symptom, does not.\n"
        "Reply with exactly one word: True or False."
    ),
    "zh": (
        "你是一名资深医生，请将学生的诊断与参考诊断进行核对。\n"
        "参考诊断：{reference}\n"
        "学生的最终答案：{answer}\n"
        "学生的答案与参考诊断是否为同一诊断？同义词、缩写以及同一疾病的更具体表述视为相同；不同的疾病或仅为症状视为不同。\n"
        "只回答一个词：True 或 False。"
    ),
}
_TRUE_WORDS = ("true", "yes", "正确", "是")
_FALSE_WORDS = ("false", "no", "错误", "否", "不")


@dataclass(frozen=True)
class JudgeReply:
    text: str
    top_logprobs: dict[str, float] | None  # first generated token's top candidates -> logprob; None without


@dataclass(frozen=True)
class JudgeVerdict:
    correct: bool | None  # None: the reply could not be read (a parse failure)
    p_true: float | None  # from logprobs, when the backend gave them
    reply: str


class JudgeBackend(Protocol):
    """Completes judge prompts; a request that still fails after the backend's own retries is its exception."""

    def complete(self, prompts: Sequence[str]) -> list[JudgeReply | Exception]: ...


class OpenAIJudgeBackend:
    """Any OpenAI-compatible chat endpoint (OpenAI, `vllm serve`, ...); the key comes from the environment.

    Requests run `max_in_flight` at a time; the `openai` client does the per-request timeout and the retries
    with exponential backoff.
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 30.0,
        max_retries: int = 2,
        max_in_flight: int = 8,
        max_tokens: int = 4,
        use_logprobs: bool = True,
    ) -> None:
        from openai import OpenAI

        # Local servers need no key; the client insists on one, so a placeholder stands in.
        api_key = os.environ.get(api_key_env) or "EMPTY"
        self.client = OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=max_retries)
        self.model, self.max_tokens, self.use_logprobs = model, max_tokens, use_logprobs
        self._pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="judge")

    def complete(self, prompts: Sequence[str]) -> list[JudgeReply | Exception]:
        futures = [self._pool.submit(self._complete_one, p) for p in prompts]
        out: list[JudgeReply | Exception] = []
        for future in futures:
            try:
                out.append(future.result())
            except Exception as err:  # one sample's transport failure must not sink the others
                out.append(err)
        return out

    def _complete_one(self, prompt: str) -> JudgeReply:
        extra = {"logprobs": True, "top_logprobs": 5} if self.use_logprobs else {}
        response = self.client.chat.completions.create(
            model=self.model,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=self.max_tokens,
            temperature=0.0,
            **extra,
        )
        choice = response.choices[0]
        top = None
        if self.use_logprobs and choice.logprobs and choice.logprobs.content:
            top = {c.token: c.logprob for c in choice.logprobs.content[0].top_logprobs}
        return JudgeReply(text=choice.message.content or "", top_logprobs=top)


class RayEngineJudgeBackend:
    """A rollout-engine actor of this Ray cluster, looked up by name, serving judge prompts as one batch."""

    def __init__(self, actor_name: str, namespace: str | None = None, timeout_s: float = 120.0,
                 max_tokens: int = 4) -> None:
        self.actor_name, self.namespace, self.timeout_s, self.max_tokens = actor_name, namespace, timeout_s, max_tokens

    def complete(self, prompts: Sequence[str]) -> list[JudgeReply | Exception]:
        import ray

        engine = ray.get_actor(self.actor_name, namespace=self.namespace)
        messages = [[{"role": "user", "content": p}] for p in prompts]
        replies = ray.get(engine.chat.remote(messages, self.max_tokens, 5), timeout=self.timeout_s)
        return [JudgeReply(text, top) for text, top in replies]


class LLMJudge:
    """Renders the judge prompt, queries the backend and reads the verdict."""

    def __init__(self, backend: JudgeBackend, threshold: float = 0.5) -> None:
        self.backend, self.threshold = backend, threshold

    def judge(self, items: Sequence[tuple[str, str, str]]) -> list[JudgeVerdict | Exception]:
        """(answer, reference, language) triples -> verdicts, in order; a failed request is its exception."""
        replies = self.backend.complete([render_judge_prompt(a, ref, lang) for a, ref, lang in items])
        return [r if isinstance(r, Exception) else self.read_verdict(r) for r in replies]

    def read_verdict(self, reply: JudgeReply) -> JudgeVerdict:
        p_true = p_true_from_logprobs(reply.top_logprobs) if reply.top_logprobs else None
        if p_true is not None:
            return JudgeVerdict(p_true >= self.threshold, p_true, reply.text)
        return JudgeVerdict(parse_verdict(reply.text), None, reply.text)


def render_judge_prompt(answer: str, reference: str, language: str) -> str:
    return JUDGE_PROMPTS.get(language, JUDGE_PROMPTS["en"]).format(answer=answer, reference=reference)


def parse_verdict(text: str) -> bool | None:
    """True / False from the reply's first word (English or Chinese); None when it is neither."""
    head = text.strip().strip("*\"'`.:：。 ").casefold()
    if head.startswith(_TRUE_WORDS):
        return True
    if head.startswith(_FALSE_WORDS):
        return False
    return None


def p_true_from_logprobs(top_logprobs: dict[str, float]) -> float | None:
    """p(True) / (p(True) + p(False)) over first-token candidates; None when neither word is among them."""
    p_true = p_false = 0.0
    for token, logprob in top_logprobs.items():
        word = token.strip().casefold()
        if word and "true".startswith(word) and len(word) >= 2:
            p_true += math.exp(logprob)
        elif word and "false".startswith(word) and len(word) >= 2:
            p_false += math.exp(logprob)
    if p_true + p_false == 0.0:
        return None
    return p_true / (p_true + p_false)
