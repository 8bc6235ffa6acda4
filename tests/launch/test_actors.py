"""The launch layer's fault handling with real Ray actors: a hung actor is found by its deadline and restarted, a
dead one is reported as lost, and a trainer's death stops the run with how to resume."""

import os
import signal
import time

import pytest

pytestmark = [pytest.mark.ray]


class Worker:
    """A stand-in role: answers `ready`, sleeps on request, reports its process id."""

    def ready(self) -> bool:
        return True

    def work(self, seconds: float) -> int:
        time.sleep(seconds)
        return os.getpid()


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, object_store_memory=200 * 1024**2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture
def restartable(local_ray):
    import ray
    from ray.util.placement_group import remove_placement_group

    from clinical_rl.device import Device
    from clinical_rl.launch.actors import kill_all, start_actor
    from clinical_rl.launch.placement import create_placement_group, plan_group

    plan = plan_group("reward", 1, 0.5, Device("cpu"))
    pg, _ = create_placement_group(plan)
    actor = start_actor(Worker, plan.slots[0], pg, max_restarts=1)
    ray.get(actor.ready.remote())
    yield actor
    kill_all([actor])
    remove_placement_group(pg)


def test_a_hung_actor_is_killed_at_its_deadline_and_comes_back(restartable):
    import ray

    from clinical_rl.launch.actors import ActorLost, gather, wait_ready

    first_pid = ray.get(restartable.work.remote(0))
    with pytest.raises(ActorLost, match=r"reward\[0\] lost: no answer within 1s; killed for a restart"):
        gather([restartable], [restartable.work.remote(60)], "reward", deadline_s=1.0)
    wait_ready([restartable], "restarted reward actor", timeout_s=60)  # polls while Ray says 'restarting'
    assert ray.get(restartable.work.remote(0)) != first_pid  # a new process


def test_a_dead_actor_is_lost_not_scored(restartable):
    import ray

    from clinical_rl.launch.actors import ActorLost, gather

    pid = ray.get(restartable.work.remote(0))
    ref = restartable.work.remote(5)
    time.sleep(1)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ActorLost, match=r"reward\[0\] lost: its process died"):
        gather([restartable], [ref], "reward", deadline_s=60)


def test_a_dead_trainer_stops_the_run_with_how_to_resume(local_ray, tmp_path):
    import ray

    from clinical_rl.rl.faults import RunStopped, stops_the_run
    from clinical_rl.rl.roles import Roles

    policy = ray.remote(Worker).remote()
    pid = ray.get(policy.work.remote(0))
    roles = Roles(tokenizer=None, engines=[], policy=[policy], critic=[], reference=None, rewards=[])
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(RunStopped) as stopped:
        with stops_the_run(roles, step=7, out_dir=tmp_path, save_every=0):
            ray.get(policy.work.remote(0))
    assert str(stopped.value).startswith("policy rank 0 died (")
    assert "at step 7; the run stopped. To continue: save_every=0 wrote no checkpoint; set save_every=N" in str(
        stopped.value)
