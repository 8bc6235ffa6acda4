"""Start any role as a Ray actor on its placement-group bundle: the package's one `ray.remote(cls).options(...)`.

The actor classes are plain Python classes; here they become Ray actors pinned to the bundle their `Slot` names.
Restartable roles (engines, rewards, judge) get `max_restarts`: Ray re-runs the constructor with the same arguments
in a new process, and the driver retries the step (`rl/faults.py`). Trainers are never restarted: their state is
only in their checkpoint.
"""

from __future__ import annotations

import time
from typing import Any

from clinical_rl.launch.placement import Slot, node_address_and_free_port


class ActorLost(RuntimeError):
    """A restartable actor (engine, reward, judge) died or missed its deadline; Ray is bringing it back.

    Raised only from phases that change no trainer state, so the driver may redo the step (`rl/faults.py`).
    """

    def __init__(self, role: str, index: int, cause: str) -> None:
        super().__init__(f"{role}[{index}] lost: {cause}")
        self.role, self.index, self.cause = role, index, cause


def gather(actors: list[Any], refs: list[Any], role: str, deadline_s: float) -> list[Any]:
    """`ray.get` of one call per actor with a deadline.

    Raises ActorLost for the first actor whose process died, or that has not answered by `deadline_s` (it is then
    killed so that Ray restarts it: a hung actor is never waited on forever).
    """
    import ray
    from ray.exceptions import RayActorError

    _, pending = ray.wait(refs, num_returns=len(refs), timeout=deadline_s)
    if pending:
        index = refs.index(pending[0])
        for ref in pending:
            ray.kill(actors[refs.index(ref)], no_restart=False)
        raise ActorLost(role, index, f"no answer within {deadline_s:.0f}s; killed for a restart")
    results = []
    for index, ref in enumerate(refs):
        try:
            results.append(ray.get(ref))
        except RayActorError as err:
            raise ActorLost(role, index, f"its process died ({type(err).__name__})") from err
    return results


def actor_options(slot: Slot, pg: Any, env: dict[str, str] | None = None, name: str | None = None,
                  max_restarts: int = 0) -> dict[str, Any]:
    """`.options(...)` that pins an actor to its bundle; `max_restarts` > 0 lets Ray bring a dead process back."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    options: dict[str, Any] = {
        "num_cpus": slot.num_cpus,
        "num_gpus": slot.num_gpus,
        "scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=slot.bundle),
    }
    if env:
        options["runtime_env"] = {"env_vars": env}
    if name:
        options["name"] = name
    if max_restarts:
        # A task that was running when the process died fails (max_task_retries=0): the driver decides what to
        # redo, since a restarted engine holds the initial weights until the next push.
        options["max_restarts"] = max_restarts
    return options


def start_actor(cls: type, slot: Slot, pg: Any, *args: Any, env: dict[str, str] | None = None,
                name: str | None = None, max_restarts: int = 0, **kwargs: Any) -> Any:
    """`cls(*args, **kwargs)` as a Ray actor on `slot`'s bundle; returns its handle without waiting."""
    import ray

    return ray.remote(cls).options(**actor_options(slot, pg, env, name, max_restarts)).remote(*args, **kwargs)


def trainer_group(cls: type, slots: list[Slot], pg: Any, *args: Any, **kwargs: Any) -> list[Any]:
    """One actor per data-parallel rank; rank 0's node hosts the torch.distributed rendezvous."""
    from clinical_rl.actors.trainer_rank import GroupRank  # torch and DeepSpeed: only where trainers start

    if not slots:
        return []
    address, port = address_on(slots[0], pg)
    return [
        start_actor(cls, slot, pg, *args, group=GroupRank(slot.index, len(slots), address, port), **kwargs)
        for slot in slots
    ]


def run_on(slot: Slot, pg: Any, fn: Any) -> Any:
    """`fn()` as a zero-resource Ray task on the node of `slot`'s bundle; returns its result.

    Raises ray.exceptions.GetTimeoutError when the node does not run it within 5 minutes."""
    import ray

    options = actor_options(slot, pg)
    options.update(num_cpus=0, num_gpus=0)
    return ray.get(ray.remote(num_cpus=0)(fn).options(**options).remote(), timeout=300)


def address_on(slot: Slot, pg: Any) -> tuple[str, int]:
    """IP and a free port of the node that holds `slot`'s bundle."""
    return run_on(slot, pg, node_address_and_free_port)


def wait_ready(actors: list[Any], what: str, timeout_s: float) -> None:
    """Block until every actor's constructor finished, also after a restart (Ray answers 'unavailable' while an
    actor restarts: asked again every second). Raises TimeoutError naming `what` past `timeout_s`, and
    ray.exceptions.ActorDiedError for an actor out of restarts."""
    import ray
    from ray.exceptions import ActorUnavailableError, GetTimeoutError

    deadline = time.monotonic() + timeout_s
    for actor in actors:
        while True:
            try:
                ray.get(actor.ready.remote(), timeout=max(1.0, deadline - time.monotonic()))
                break
            except ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{what} still restarting after {timeout_s:.0f}s") from None
                time.sleep(1.0)
            except GetTimeoutError:
                raise TimeoutError(f"{what} not ready after {timeout_s:.0f}s (model load or placement stuck; see the "
                                   "actor logs under the Ray session's logs/ directory)") from None


def kill_all(actors: list[Any]) -> None:
    """Kill actors for good (no restart)."""
    import ray

    for actor in actors:
        ray.kill(actor, no_restart=True)
