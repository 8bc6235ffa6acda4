"""A reward class that, on its first call of a run, SIGKILLs a rollout engine's process and then its own: the
'actor lost mid-step' case of the fault test. A marker file makes it happen once (the restarted actor and the
redone step score normally)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil

from clinical_rl.rewards.base import RewardInput, RewardResult
from clinical_rl.rewards.clinical import ClinicalReward


def engine_pids() -> list[int]:
    """Processes of rollout engine actors on this host (Ray titles an actor's process `ray::<Class>...`)."""
    return [p.pid for p in psutil.process_iter(["cmdline"])
            if (p.info["cmdline"] or [""])[0].startswith("ray::RolloutEngine")]


class KillsEngineAndItselfOnce:
    def __init__(self, marker: str) -> None:
        self.marker = Path(marker)
        self.inner = ClinicalReward()

    def score(self, batch: list[RewardInput]) -> list[RewardResult]:
        if not self.marker.exists():
            pids = engine_pids()
            self.marker.write_text(f"engine {pids[0]}, reward {os.getpid()}")
            os.kill(pids[0], signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
        return self.inner.score(batch)
