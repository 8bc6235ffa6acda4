"""Requests-per-minute and tokens-per-minute limits on a chat backend, shared by every synthesis thread.

Two token buckets, each holding at most one minute's budget and refilled continuously; `acquire` blocks until both
hold enough. Tokens are estimated before the call (prompt characters / 4 + `max_tokens`), as API quotas count them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from clinical_rl.llm_client import ChatBackend, ChatReply, Conversation


class RateLimiter:
    """`acquire(tokens_estimate)` blocks until a request of that many tokens fits; a limit of 0 or None is off."""

    def __init__(self, requests_per_min: float | None = None, tokens_per_min: float | None = None) -> None:
        self.caps = (float(requests_per_min or 0), float(tokens_per_min or 0))
        self.levels = list(self.caps)  # start full: the first minute may use its whole budget
        self._stamp = time.monotonic()
        self._lock = threading.Lock()  # held while waiting, so waiters are served in turn

    def acquire(self, tokens_estimate: int = 0, requests: int = 1) -> None:
        # A request above a whole minute's budget would never fit; it waits for a full bucket instead.
        needs = [min(float(n), cap) for n, cap in zip((requests, tokens_estimate), self.caps)]
        with self._lock:
            while True:
                now = time.monotonic()
                for i, cap in enumerate(self.caps):
                    self.levels[i] = min(cap, self.levels[i] + cap * (now - self._stamp) / 60)
                self._stamp = now
                wait_s = max([(n - lvl) / cap * 60 for n, lvl, cap in zip(needs, self.levels, self.caps)
                              if cap and n > lvl], default=0.0)
                if wait_s <= 0:
                    self.levels = [lvl - n for n, lvl in zip(needs, self.levels)]
                    return
                time.sleep(wait_s)


class RateLimitedChat:
    """A chat backend whose every conversation first acquires the limiter."""

    def __init__(self, backend: ChatBackend, limiter: RateLimiter) -> None:
        self.backend, self.limiter = backend, limiter

    def chat(self, conversations: Sequence[Conversation], max_tokens: int, temperature: float = 0.0,
             top_logprobs: int = 0) -> list[ChatReply | Exception]:
        for conversation in conversations:
            self.limiter.acquire(sum(len(m["content"]) for m in conversation) // 4 + max_tokens)
        return self.backend.chat(conversations, max_tokens, temperature, top_logprobs)
