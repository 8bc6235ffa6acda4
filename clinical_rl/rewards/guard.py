"""Reward guarding: a user-swappable reward class run with a timeout, retries, isolation and a status on every
sample (`RewardActor`), and the fan-out of a batch over the reward actors with a deadline (`score_on_actors`).

This is the only place a verifier's exception is caught: it becomes a `RewardResult` with status `error` or
`timeout` (logged with its traceback), which the driver masks out of the loss and counts. A reward actor whose
process dies or hangs is not turned into scores: the step is redone once Ray restarted it.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from typing import Any

from clinical_rl.config import RewardConfig
from clinical_rl.launch.actors import gather
from clinical_rl.rewards.base import RewardInput, RewardResult, load_reward_class

log = logging.getLogger(__name__)


class RewardActor:
    """Wraps `cfg.cls(**cfg.kwargs)`; `score` never raises for a verifier failure."""

    def __init__(self, cfg: RewardConfig) -> None:
        self.cfg = cfg
        self.fn = load_reward_class(cfg.cls)(**cfg.kwargs)
        # A timed-out call cannot be killed from Python; it finishes in its thread while the result is dropped.
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="reward")
        self._last_failure = RewardResult.failed("error", "not scored")

    def ready(self) -> bool:
        return True

    def score(self, batch: list[RewardInput]) -> list[RewardResult]:
        """Score a batch; after `max_retries` failed attempts, score sample by sample to isolate bad ones."""
        results = self._attempts(batch)
        if results is not None:
            return results
        if len(batch) == 1:
            return [self._last_failure]
        return [r for item in batch for r in (self._attempts([item]) or [self._last_failure])]

    def _attempts(self, batch: list[RewardInput]) -> list[RewardResult] | None:
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                time.sleep(backoff_s(attempt))  # flaky endpoints recover
            future = self._pool.submit(self.fn.score, batch)
            try:
                results = future.result(timeout=self.cfg.timeout_s)
            except FutureTimeout:
                self._last_failure = RewardResult.failed("timeout", f"no answer in {self.cfg.timeout_s}s")
                log.warning("reward %s timed out (attempt %d)", self.cfg.cls, attempt + 1)
                continue
            except Exception as err:  # the plugin boundary: any failure becomes a status, never a score
                self._last_failure = RewardResult.failed("error", f"{type(err).__name__}: {err}")
                log.warning("reward %s failed (attempt %d)", self.cfg.cls, attempt + 1, exc_info=True)
                continue
            if not isinstance(results, list) or len(results) != len(batch):
                got = len(results) if isinstance(results, list) else type(results).__name__
                self._last_failure = RewardResult.failed("error", f"returned {got} results for {len(batch)} samples")
                log.warning("reward %s: %s", self.cfg.cls, self._last_failure.details["error"])
                continue
            return [r.check() for r in results]
        return None


def backoff_s(attempt: int) -> float:
    """Seconds to wait before retry number `attempt` (1, 2, …): 0.5, 1, 2, … capped at 8."""
    return min(0.5 * 2 ** (attempt - 1), 8.0)


def score_deadline_s(cfg: RewardConfig, samples: int) -> float:
    """The longest a healthy `RewardActor.score` of `samples` items can take, plus 30 s: every attempt of the batch
    times out, then (for more than one item) every item's attempts do too. Past it the actor is hung, not slow."""
    attempts = sum(cfg.timeout_s + (backoff_s(a) if a else 0.0) for a in range(cfg.max_retries + 1))
    return attempts * (1 + samples if samples > 1 else 1) + 30.0


def score_on_actors(actors: list[Any], items: list[RewardInput], cfg: RewardConfig) -> list[RewardResult]:
    """Split `items` over the reward actors (round robin) and score them; one result per item, in order.

    Raises `launch.actors.ActorLost` when an actor died or overran its deadline (then killed for a restart).
    """
    chunks = [items[i :: len(actors)] for i in range(len(actors))]
    refs = [actor.score.remote(chunk) for actor, chunk in zip(actors, chunks)]
    scored = gather(actors, refs, "reward", score_deadline_s(cfg, max(map(len, chunks))))
    results: list[RewardResult] = [None] * len(items)  # type: ignore[list-item]
    for a, chunk_results in enumerate(scored):
        results[a :: len(actors)] = chunk_results
    return results
