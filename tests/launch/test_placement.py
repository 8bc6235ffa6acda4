"""Placement plan: one bundle per actor instance, CPU or GPU bundles from the device, colocation."""

import pytest

from clinical_rl.config import PlacementConfig
from clinical_rl.config_files import load_config
from clinical_rl.launch.layout import assign_nodes, format_totals, plan_memory, run_totals
from clinical_rl.launch.placement import format_plan, plan_placement


def test_cpu_plan_has_a_bundle_per_actor():
    cfg = load_config(None, ["rollout.num_engines=2", "policy.world_size=2", "critic.world_size=2", "reward.num_actors=2"])
    plan = plan_placement(cfg)
    roles = [s.role for s in plan.slots]
    assert roles.count("rollout") == 2 and roles.count("policy") == 2 and roles.count("critic") == 2
    assert roles.count("reference") == 1 and roles.count("reward") == 2
    assert len(plan.bundles) == len(plan.slots) == 9
    assert all("GPU" not in b for b in plan.bundles)
    assert all(s.num_gpus == 0 for s in plan.slots)


def test_gpu_plan_asks_for_gpus_except_reward():
    plan = plan_placement(load_config(None, ["device=gpu"]))
    for slot in plan.slots:
        bundle = plan.bundles[slot.bundle]
        if slot.role == "reward":
            assert "GPU" not in bundle and slot.num_gpus == 0
        else:
            assert bundle["GPU"] == 1 and slot.num_gpus == 1


def test_grpo_plan_has_no_critic():
    plan = plan_placement(load_config(None, ["algo.advantage=grpo", "algo.n_samples_per_prompt=4"]))
    assert not plan.of("critic")


def test_colocated_roles_share_a_bundle_and_split_its_gpu():
    cfg = load_config(None, ["device=gpu", "placement.colocate=true", "policy.world_size=2", "critic.world_size=2"])
    plan = plan_placement(cfg)
    rank0 = {s.role: s for s in plan.slots if s.bundle == plan.of("policy")[0].bundle}
    assert set(rank0) == {"policy", "critic", "reference"}
    assert abs(sum(s.num_gpus for s in rank0.values()) - 1.0) < 1e-9
    assert plan.bundles[plan.of("policy")[0].bundle]["GPU"] == 1
    text = format_plan(plan)
    assert "policy[0], critic[0], reference[0]" in text and "policy[1], critic[1]" in text


def test_colocated_engines_share_the_policy_ranks_bundles_on_gpu_only():
    cfg = load_config(None, ["device=gpu", "placement.colocate_engines=true", "policy.world_size=2",
                             "rollout.num_engines=2", "algo.minibatch_size=16"])
    plan = plan_placement(cfg)
    for rank in range(2):
        policy, engine = plan.of("policy")[rank], plan.of("rollout")[rank]
        assert engine.bundle == policy.bundle and engine.num_gpus == policy.num_gpus == 0.5
        assert plan.bundles[policy.bundle] == {"GPU": 1, "CPU": cfg.policy.num_cpus + cfg.rollout.num_cpus}
    assert "policy[0], rollout[0]" in format_plan(plan)
    with pytest.raises(ValueError, match="vLLM's CPU backend cannot sleep"):
        load_config(None, ["device=cpu", "placement.colocate_engines=true"])
    with pytest.raises(ValueError, match="num_engines == policy.world_size"):
        load_config(None, ["device=gpu", "placement.colocate_engines=true", "rollout.num_engines=2"])


def test_no_reference_without_a_kl_penalty():
    assert plan_placement(load_config(None, ["algo.kl_coef=0.03"])).of("reference")
    assert not plan_placement(load_config(None, ["algo.kl_coef=0"])).of("reference")


def test_engine_bundle_holds_its_tensor_parallel_gpus():
    cfg = load_config(None, ["device=gpu", "rollout.tensor_parallel_size=2", "rollout.num_cpus=2",
                             "rollout.num_engines=2", "reward.judge_engine={tensor_parallel_size: 2, num_cpus: 2}"])
    plan = plan_placement(cfg)
    for slot in plan.of("rollout") + plan.of("judge"):
        assert plan.bundles[slot.bundle] == {"GPU": 2, "CPU": 2} and slot.num_gpus == 2
    assert plan.bundles[plan.of("policy")[0].bundle]["GPU"] == 1
    cpu_plan = plan_placement(load_config(None, ["rollout.tensor_parallel_size=2", "rollout.num_cpus=2"]))
    assert cpu_plan.bundles[0] == {"CPU": 2} and cpu_plan.of("rollout")[0].num_gpus == 0
    with pytest.raises(ValueError, match="colocate_engines needs rollout.tensor_parallel_size 1"):
        plan_placement(load_config(None, ["device=gpu", "placement.colocate_engines=true", "rollout.num_cpus=2",
                                          "rollout.tensor_parallel_size=2"]))


def _cluster(nodes, gpus, cpus=None):
    return PlacementConfig(num_nodes=nodes, gpus_per_node=gpus, cpus_per_node=cpus)


def test_strategies_place_bundles_as_ray_does():
    one_gpu = [{"GPU": 1, "CPU": 1}] * 4
    assert assign_nodes(one_gpu, "PACK", _cluster(2, 2)) == [0, 0, 1, 1]  # fill node 0, then node 1
    assert assign_nodes(one_gpu, "PACK", _cluster(2, 8)) == [0, 0, 0, 0]
    assert assign_nodes(one_gpu, "SPREAD", _cluster(2, 8)) == [0, 1, 0, 1]  # fewest bundles first
    assert assign_nodes(one_gpu[:2], "STRICT_SPREAD", _cluster(2, 8)) == [0, 1]
    assert assign_nodes(one_gpu, "STRICT_PACK", _cluster(2, 4)) == [0, 0, 0, 0]
    # A TP bundle never spans nodes: 1 free GPU on each of two nodes does not hold a 2-GPU bundle.
    with pytest.raises(ValueError, match=r"bundle 2 \{'GPU': 2\} does not fit on any of the 2 nodes"):
        assign_nodes([{"GPU": 3}, {"GPU": 3}, {"GPU": 2}], "PACK", _cluster(2, 4))
    with pytest.raises(ValueError, match="bundle 2 .* does not fit on node 0 \\(STRICT_PACK\\)"):
        assign_nodes(one_gpu[:3], "STRICT_PACK", _cluster(2, 2))
    with pytest.raises(ValueError, match="STRICT_SPREAD puts each of the 4 bundles on its own node but the "
                                         "cluster has 2"):
        assign_nodes(one_gpu, "STRICT_SPREAD", _cluster(2, 8))
    # CPUs count too: two 4-CPU bundles on 6-CPU nodes go to different nodes under PACK.
    assert assign_nodes([{"CPU": 4}, {"CPU": 4}], "PACK", _cluster(2, 0, cpus=6)) == [0, 1]


def test_totals_per_node_follow_the_layout():
    cfg = load_config(None, ["device=gpu", "placement.strategy=SPREAD", "placement.num_nodes=2",
                             "placement.architecture=SmolLM2-135M", "model.path=/absent"])
    memory = plan_memory(cfg)
    totals = run_totals(memory, cfg)
    # Bundles: rollout (1 GPU, 1 CPU), policy (1, 1), critic (1, 1), reference (1, 0.5), reward (0.25 CPU).
    # SPREAD alternates: node 0 gets rollout, critic, reward; node 1 policy, reference.
    assert memory.bundle_nodes == [0, 1, 0, 1, 0]
    assert [(n.gpus, n.cpus) for n in totals.nodes] == [(2, 2.25), (2, 1.5)]
    assert (totals.gpus, totals.cpus) == (4, 3.75)
    # A node's memory is the sum of its GPUs' peaks; its fullest GPU is the largest of them.
    for node in totals.nodes:
        peaks = [d.peak_gib for d in memory.devices if d.node == node.node]
        assert node.memory_gib == sum(peaks) and node.largest_gib == max(peaks) and len(peaks) == 2
    assert totals.gpu_memory_gib == sum(d.peak_gib for d in memory.devices)
    lines = format_totals(totals, cfg)
    assert lines[1].startswith("    node 0: 2 of 8 GPUs, 2.25 CPUs, GPU memory ")
    assert lines[2].startswith("    node 1: 2 of 8 GPUs, 1.5 CPUs, GPU memory ")
