"""Several nodes, simulated by `ray.cluster_utils.Cluster` on this machine: the plan's node labels and strategies
are honoured, each actor runs on its bundle's node, engines that share a node get disjoint CPU bindings, and one
PPO step runs with the weights pushed from the training node to the inference node."""

import os

import pytest
import torch

from tests.candidate_task import SYSTEM_PROMPT
from tests.rl.test_driver import task_config

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.vllm]
LABELS = "{rollout: {pool: inference}, policy: {pool: training}, critic: {pool: training}, reward: {pool: training}}"


@pytest.fixture
def two_node_cluster():
    """A head for the driver only (0 CPUs), an 'inference' node of 2 CPUs and a 'training' node of 3."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 256 * 1024**2})
    inference = cluster.add_node(num_cpus=2, labels={"pool": "inference"}, object_store_memory=256 * 1024**2)
    training = cluster.add_node(num_cpus=3, labels={"pool": "training"}, object_store_memory=256 * 1024**2)
    ray.init(address=cluster.address)
    try:
        yield inference.node_id, training.node_id
    finally:
        ray.shutdown()
        cluster.shutdown()


def node_of(actor) -> str:
    import ray

    return ray.get(actor.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))


def test_strategies_spread_or_pack_the_bundles(two_node_cluster):
    from ray.util.placement_group import remove_placement_group

    from clinical_rl.device import Device
    from clinical_rl.launch.placement import create_placement_group, plan_group

    for strategy, distinct_nodes in (("STRICT_SPREAD", 2), ("PACK", 1)):
        pg, nodes = create_placement_group(plan_group("x", 2, 1.0, Device("cpu"), strategy=strategy))
        assert len(set(nodes)) == distinct_nodes, strategy
        remove_placement_group(pg)


def test_engines_and_trainers_on_their_nodes_one_step_and_weights_cross_nodes(
        two_node_cluster, task_model, task_cases, tmp_path):
    import ray

    from clinical_rl.actors.rollout import RolloutEngine
    from clinical_rl.data.loaders import load_cases
    from clinical_rl.data.prompts import render_prompt
    from clinical_rl.device import Device
    from clinical_rl.launch.engines import BIND_ENV
    from clinical_rl.launch.placement import create_placement_group, plan_placement
    from clinical_rl.rl.batch import RolloutBatch
    from clinical_rl.rl.driver import rl_step
    from clinical_rl.rl.rollouts import generate
    from clinical_rl.rl.roles import start_roles, stop_roles

    inference, training = two_node_cluster
    cfg = task_config(task_model, task_cases, tmp_path / "run", "policy.lr=1e-3", "rollout.num_engines=2",
                      "algo.kl_coef=0", "ray.address=auto", f"placement.node_labels={LABELS}")
    plan = plan_placement(cfg)
    pg, nodes = create_placement_group(plan)
    assert [nodes[s.bundle] for s in plan.of("rollout")] == [inference, inference]
    assert {nodes[s.bundle] for s in plan.slots if s.role != "rollout"} == {training}

    roles = start_roles(cfg, plan, pg, nodes, task_model, task_model)
    try:
        assert [node_of(e) for e in roles.engines] == [inference, inference]
        assert {node_of(a) for a in [*roles.policy, *roles.critic, *roles.rewards]} == {training}
        bindings = [ray.get(e.__ray_call__.remote(lambda self: os.environ[BIND_ENV])) for e in roles.engines]
        cores = [set(b.split(",")) for b in bindings]
        assert all(cores) and not cores[0] & cores[1], bindings

        cases = load_cases(str(task_cases))[:4]
        prompts = [render_prompt(roles.tokenizer, c, SYSTEM_PROMPT) for c in cases]
        before: RolloutBatch = generate(roles, cases, prompts, n=1, deadline_s=600)
        old = ray.get(roles.policy[0].logprobs.remote(before))
        rl_step(cfg, roles, cases * 2, step=1)  # update on the training node, push to the inference node
        trainer = ray.get(roles.policy[0].logprobs.remote(before))
        rows = [ids[mask.bool()].tolist() for ids, mask in zip(before.input_ids, before.attention_mask)]
        mask = before.response_mask.bool()
        assert (trainer - old)[mask].abs().max() > 1e-2  # the step changed the weights, so agreement means a sync
        for engine in roles.engines:  # both engines hold the new weights: vLLM's logprobs equal the trainer's
            for i, row in enumerate(ray.get(engine.token_logprobs.remote(rows))):
                diff = (torch.tensor(row) - trainer[i, : len(row)])[mask[i, : len(row)]]
                assert diff.abs().max() < 1e-3

        saved = roles.save_policy(tmp_path / "policy")
    finally:
        stop_roles(roles)
    reloaded = RolloutEngine(str(saved), cfg.rollout, Device("cpu"), "float32", seed=0)  # vLLM loads the export
    first = torch.tensor(reloaded.token_logprobs(rows[:1])[0])
    assert (first - trainer[0, : len(rows[0])])[mask[0, : len(rows[0])]].abs().max() < 1e-3
    reloaded.shutdown()
