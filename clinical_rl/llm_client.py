"""Chat completions from an OpenAI-compatible endpoint or from this cluster's rollout-engine actors, one interface.

The judge, evaluation and synthesis all ask an LLM to complete conversations; `ChatBackend.chat` takes a batch and
returns one reply per conversation, or that conversation's exception (a failed request never sinks the others).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

Conversation = list[dict[str, str]]  # [{"role": "system" | "user" | "assistant", "content": ...}, ...]


@dataclass(frozen=True)
class ChatReply:
    text: str
    top_logprobs: dict[str, float] | None = None  # first generated token's top candidates -> logprob
    finish_reason: str | None = None  # "stop" or "length"


class ChatBackend(Protocol):
    def chat(self, conversations: Sequence[Conversation], max_tokens: int, temperature: float = 0.0,
             top_logprobs: int = 0) -> list[ChatReply | Exception]: ...


class OpenAIChat:
    """Any OpenAI-compatible endpoint (OpenAI, `vllm serve`, ...); the key comes from the environment.

    Requests run `max_in_flight` at a time; the `openai` client does the per-request timeout and the retries with
    exponential backoff.
    """

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 timeout_s: float = 60.0, max_retries: int = 2, max_in_flight: int = 8) -> None:
        from openai import OpenAI

        # Local servers need no key; the client insists on one, so a placeholder stands in.
        api_key = os.environ.get(api_key_env) or "EMPTY"
        self.client = OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=max_retries)
        self.model = model
        self._pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="chat")

    def chat(self, conversations: Sequence[Conversation], max_tokens: int, temperature: float = 0.0,
             top_logprobs: int = 0) -> list[ChatReply | Exception]:
        futures = [self._pool.submit(self._one, c, max_tokens, temperature, top_logprobs) for c in conversations]
        out: list[ChatReply | Exception] = []
        for future in futures:
            try:
                out.append(future.result())
            except Exception as err:  # reported per conversation; the caller decides what a failure means
                out.append(err)
        return out

    def _one(self, conversation: Conversation, max_tokens: int, temperature: float, top_logprobs: int) -> ChatReply:
        extra = {"logprobs": True, "top_logprobs": top_logprobs} if top_logprobs else {}
        response = self.client.chat.completions.create(
            model=self.model, messages=conversation, max_tokens=max_tokens, temperature=temperature, **extra
        )
        choice = response.choices[0]
        top = None
        if top_logprobs and choice.logprobs and choice.logprobs.content:
            top = {c.token: c.logprob for c in choice.logprobs.content[0].top_logprobs}
        return ChatReply(choice.message.content or "", top, choice.finish_reason)


class EngineChat:
    """Rollout-engine actors (vLLM) of this Ray cluster, data parallel: conversations are split across them.

    Give the actor handles, or the name of one actor; a name is looked up at the first request, so the engine may
    start after its users (the judge engine starts alongside the reward actors).
    """

    def __init__(self, engines: Sequence[Any] = (), name: str | None = None, timeout_s: float = 600.0) -> None:
        if not engines and not name:
            raise ValueError("EngineChat needs engine handles or an actor name")
        self.engines, self.name, self.timeout_s = list(engines), name, timeout_s

    def chat(self, conversations: Sequence[Conversation], max_tokens: int, temperature: float = 0.0,
             top_logprobs: int = 0) -> list[ChatReply | Exception]:
        import ray

        if not self.engines:
            self.engines = [ray.get_actor(self.name)]
        k = len(self.engines)
        refs = [e.chat.remote(list(conversations[i::k]), max_tokens, temperature, top_logprobs)
                for i, e in enumerate(self.engines) if conversations[i::k]]
        out: list[ChatReply | Exception] = [None] * len(conversations)  # type: ignore[list-item]
        for i, ref in enumerate(refs):
            try:
                out[i::k] = ray.get(ref, timeout=self.timeout_s)
            except Exception as err:  # a dead or hung engine fails its share, not the whole batch
                out[i::k] = [err] * len(out[i::k])
        return out
