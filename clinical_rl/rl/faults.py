"""What the driver does when an actor of a run dies or hangs.

Engines, reward actors and the judge hold no state a step needs (an engine's weights are pushed again): Ray
restarts their processes (`max_restarts`), and the step is redone once with the same prompts. The redo is safe
because `ActorLost` is raised only by generation and reward scoring, before any trainer state changes. Trainers
hold the optimizer state, which lives only in checkpoints: their death stops the run with how to resume.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from clinical_rl.launch.actors import ActorLost, wait_ready
from clinical_rl.rl.checkpoint import latest_checkpoint
from clinical_rl.rl.roles import Roles

log = logging.getLogger(__name__)
RESTART_TIMEOUT_S = 1800.0  # a restarted engine reloads its model


class RunStopped(RuntimeError):
    """An actor the run cannot restart died or hung; the message says how to resume."""


def redo_on_restart(roles: Roles, step: int, run_step: Callable[[], dict[str, float]]) -> dict[str, float]:
    """`run_step()`; when a restartable actor was lost, wait for Ray to restart it, push the policy's weights to
    every engine again and redo the step once (its metrics then carry `fault/step_retries` = 1).

    Raises RunStopped when the redo loses an actor too."""
    try:
        return run_step()
    except ActorLost as lost:
        print(f"step {step}: {lost}. Ray restarts it; redoing the step with the same prompts", flush=True)
        restore_restarted(roles)
    try:
        return run_step() | {"fault/step_retries": 1.0}
    except ActorLost as lost:
        raise RunStopped(f"step {step} failed twice: {lost}") from lost


def restore_restarted(roles: Roles) -> None:
    """Wait until every restartable actor answers, then give the engines a new transfer group and the weights."""
    wait_ready([*roles.engines, *roles.rewards, *([roles.judge] if roles.judge else [])], "restarted actors",
               RESTART_TIMEOUT_S)
    roles.connect_weight_sync()
    roles.sync_weights()


@contextlib.contextmanager
def stops_the_run(roles: Roles, step: int, out_dir: Path, save_every: int) -> Iterator[None]:
    """Turn a trainer's death, a hung trainer or a failed redo into RunStopped with how to resume."""
    from ray.exceptions import RayActorError

    try:
        yield
    except RunStopped as err:
        raise RunStopped(stop_message(str(err), step, out_dir, save_every)) from err
    except RayActorError as err:
        what = f"{roles.name_of(getattr(err, 'actor_id', None))} died ({type(err).__name__})"
        raise RunStopped(stop_message(what, step, out_dir, save_every)) from err
    except TimeoutError as err:
        raise RunStopped(stop_message(str(err), step, out_dir, save_every)) from err


def stop_message(what: str, step: int, out_dir: Path, save_every: int) -> str:
    """Why the run stopped at `step` and the command that continues it."""
    checkpoint = latest_checkpoint(out_dir)
    if checkpoint is not None:
        resume = (f"run the same command again: it resumes from {checkpoint.directory} (step {checkpoint.state.step}) "
                  "with resume=true (the default)")
    elif save_every:
        resume = "no checkpoint was written yet; run the same command again to start over"
    else:
        resume = "save_every=0 wrote no checkpoint; set save_every=N to be able to resume after such a failure"
    return f"{what} at step {step}; the run stopped. To continue: {resume}."
