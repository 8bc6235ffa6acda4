"""Pure parts of the launch layer: core bindings of engines that share a node, the engine config shape, and the
node-label selectors of a plan's bundles."""

import pytest

from clinical_rl.config_files import load_config
from clinical_rl.launch.engines import rollout_config, split_cores
from clinical_rl.launch.placement import plan_placement


@pytest.mark.parametrize("cores, widths, runs", [
    ([0, 1], [1, 1], [[0], [1]]),                       # two 1-CPU engines on a 2-core node: one core each
    ([0, 1, 2, 3, 4, 5, 6, 7], [2, 2], [[0, 1], [2, 3]]),  # consecutive runs, the rest left to the trainers
    ([4, 5, 6, 7], [3, 1], [[4, 5, 6], [7]]),            # the node's own core ids, not 0..n-1
    ([0, 1], [2, 2], [[0], [1]]),                       # oversubscribed: proportional shares 2*2//4 = 1 each
    ([0, 1], [1, 1, 1], [[0], [1], [0]]),               # more engines than cores: round robin (logged by the caller)
])
def test_split_cores(cores, widths, runs):
    assert split_cores(cores, widths) == runs


def test_every_engine_config_becomes_the_engine_actor_config():
    cfg = load_config(None, ["reward.judge_engine.max_model_len=512", "reward.judge_engine.tensor_parallel_size=1",
                             "eval.engine.num_engines=2"])
    judge = rollout_config(cfg.reward.judge_engine)
    assert (judge.max_model_len, judge.dtype, judge.kv_cache_gib) == (512, "bfloat16", 1.0)
    assert rollout_config(cfg.eval.engine).num_engines == 2
    assert rollout_config(cfg.rollout) is cfg.rollout  # the rollout's own sampling settings are kept


def test_node_labels_select_the_nodes_of_each_role_bundle():
    cfg = load_config(None, ["placement.node_labels={rollout: {pool: inference}, policy: {pool: training}}"])
    plan = plan_placement(cfg)
    by_role = {s.role: plan.label_selectors()[s.bundle] for s in plan.slots}
    assert by_role == {"rollout": {"pool": "inference"}, "policy": {"pool": "training"}, "critic": {},
                       "reference": {}, "reward": {}}
    # colocated roles share the policy's bundle, so they land where the policy's labels say
    colocated = plan_placement(load_config(None, ["placement.colocate=true",
                                                  "placement.node_labels={policy: {pool: training}}"]))
    shared = {s.role: colocated.label_selectors()[s.bundle] for s in colocated.slots if s.bundle == 1}
    assert shared == {"policy": {"pool": "training"}, "critic": {"pool": "training"},
                      "reference": {"pool": "training"}}
