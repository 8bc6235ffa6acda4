"""RewardActor: runs a user-swappable reward class with a timeout, retries and a status on every sample.

This is the only place a verifier's exception is caught: it becomes a `RewardResult` with status `error` or
`timeout` (logged with its traceback), which the driver masks out of the loss and counts.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from clinical_rl.config import RewardConfig
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
                time.sleep(min(0.5 * 2 ** (attempt - 1), 8.0))  # backoff: flaky endpoints recover
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
