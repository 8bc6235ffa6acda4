"""Memory plan: exact parameter counts, per-role formulas and the Qwen2.5-7B PPO layout on 2 x 8 H100 80 GiB.

Golden numbers are derived by hand beside each assertion (docs/memory.md has the formulas). GiB = 2**30 bytes.
Pure: no Ray, no GPU.
"""

import json

import pytest
import torch

from clinical_rl.config_files import load_config
from clinical_rl.launch.layout import check_memory, plan_memory
from clinical_rl.launch.memory import BUILTIN_ARCHITECTURES, load_architecture

GIB = 2**30

# Qwen2.5-7B-Instruct's published config.json (the fields the count and the estimate read, plus a few more).
QWEN25_7B = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944,
    "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
    "tie_word_embeddings": False, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1e6,
    "hidden_act": "silu", "torch_dtype": "bfloat16",
}
# P: embeddings 152064·3584 = 544,997,376, twice (untied LM head) = 1,089,994,752;
# one layer: q 3584·3584 = 12,845,056, k and v 3584·512 = 1,835,008 each, o 12,845,056, q/k/v biases 4,608,
# MLP 3·3584·18944 = 203,685,888, two norms 7,168 -> 233,057,792; x 28 = 6,525,618,176; final norm 3,584.
QWEN25_7B_PARAMS = 1_089_994_752 + 6_525_618_176 + 3_584  # = 7,615,616,512


@pytest.fixture
def qwen_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(QWEN25_7B))
    return tmp_path


def _cluster_cfg(qwen_dir, *overrides):
    """configs/cluster_qwen2.5_7b.yaml with the model read from `qwen_dir` (no placement.architecture)."""
    return load_config("configs/cluster_qwen2.5_7b.yaml",
                       [f"model.path={qwen_dir}", "placement.architecture=null", *overrides])


def _meta_count(hf_config, auto_cls):
    with torch.device("meta"):
        model = auto_cls.from_config(hf_config)
    return sum(p.numel() for p in model.parameters())  # tied weights are one Parameter, counted once


@pytest.mark.parametrize("name, values", [
    ("qwen2.5-7b", QWEN25_7B),
    ("smollm2 (llama, tied)", BUILTIN_ARCHITECTURES["SmolLM2-135M"]),
    ("llama with biases", dict(model_type="llama", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=100, attention_bias=True,
                               mlp_bias=True, tie_word_embeddings=False)),
    ("qwen3 (q/k norms)", dict(model_type="qwen3", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=32, vocab_size=100)),
    ("mistral", dict(model_type="mistral", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=1, vocab_size=100)),
])
def test_parameter_count_matches_the_model_on_the_meta_device(tmp_path, name, values):
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    (tmp_path / "config.json").write_text(json.dumps(values))
    arch = load_architecture(str(tmp_path))
    hf_config = AutoConfig.from_pretrained(str(tmp_path))
    assert arch.num_params() == _meta_count(hf_config, AutoModelForCausalLM)
    # The critic: the base model (no LM head) plus a Linear(h, 1) value head with bias.
    assert arch.critic_params() == _meta_count(hf_config, AutoModel) + arch.hidden + 1


def test_qwen25_7b_count_and_builtin_agree(qwen_dir):
    arch = load_architecture(str(qwen_dir / "config.json"))
    assert arch.num_params() == QWEN25_7B_PARAMS == 7_615_616_512
    assert load_architecture("Qwen2.5-7B").num_params() == QWEN25_7B_PARAMS
    with pytest.raises(FileNotFoundError, match="built-in"):
        load_architecture(str(qwen_dir / "missing"))


def test_qwen25_7b_ppo_on_2x8_h100(qwen_dir):
    memory = check_memory(_cluster_cfg(qwen_dir))
    plan = memory.placement
    # 6 engines + 4 policy + 4 critic + 1 reference GPU bundles, 4 CPU-only reward bundles.
    assert len(plan.bundles) == 19 and sum(b.get("GPU", 0) for b in plan.bundles) == 15
    # PACK fills node 0's 8 GPUs in bundle order (6 engines, policy 0-1), then node 1 (policy 2-3, critic, ref);
    # the CPU-only reward bundles fit on node 0 (192 CPUs).
    assert memory.bundle_nodes == [0] * 8 + [1] * 7 + [0] * 4
    on = {(d.node, d.gpu): [f"{s.role}[{s.index}]" for s, _ in d.members] for d in memory.devices}
    assert on[(0, 0)] == ["rollout[0]"] and on[(0, 7)] == ["policy[1]"] and on[(1, 6)] == ["reference[0]"]
    assert len(on) == 15 and not memory.problems

    by_role = {d.members[0][0].role: d for d in memory.devices}
    # Engine: 0.85 x 80 = 68.0 GiB reserved; weights 2 B x P = 15,231,233,024 B = 14.185 GiB; context 1.0;
    # KV = 68 - 14.185 - 1 = 52.815 GiB, at 2 (K,V) x 28 layers x 4 heads x 128 x 2 B = 57,344 B per token.
    engine = by_role["rollout"].members[0][1]
    assert by_role["rollout"].peak_gib == pytest.approx(68.0)
    assert dict(engine.parts)["weights/tp"] == pytest.approx(15_231_233_024 / GIB)
    assert engine.kv_tokens == int((68.0 - 15_231_233_024 / GIB - 1.0) * GIB // 57_344) == 988_934

    # Policy rank, ZeRO-3 over N = 4, bf16, B = 2, T = 4096 (8,192 tokens), checkpointing:
    #   weights 2P/4 = 3,807,808,256; grads 2P/4 = 3,807,808,256; optimizer 12P/4 = 22,846,849,536
    #   activations: layer inputs 28 x 8192 x 3584 x 2 = 1,644,167,168 + one layer recomputed
    #     8192 x (6·3584 + 2·512 + 4·18944 = 98,304) x 2 = 1,610,612,736
    #   logits 8192 x 152064 x (2 + 8) = 12,457,082,880
    #   ZeRO buffers: reduce bucket 5e8 x 2 = 1e9 + gathered 2 x (152064·3584 = 544,997,376) x 2 = 2,179,989,504
    #   CUDA context 1 GiB
    policy_bytes = (3_807_808_256 * 2 + 22_846_849_536 + 1_644_167_168 + 1_610_612_736 + 12_457_082_880
                    + 1_000_000_000 + 2_179_989_504)
    assert by_role["policy"].peak_gib == pytest.approx(policy_bytes / GIB + 1.0)  # 46.96 GiB
    # Critic: P_c = P - 544,997,376 (no LM head) + 3,585 (value head) = 7,070,622,721; no vocabulary logits.
    #   weights, grads 2P_c/4 = 3,535,311,360.5 each; optimizer 12P_c/4 = 21,211,868,163
    critic_bytes = (3_535_311_360.5 * 2 + 21_211_868_163 + 1_644_167_168 + 1_610_612_736
                    + 1_000_000_000 + 2_179_989_504)
    assert by_role["critic"].peak_gib == pytest.approx(critic_bytes / GIB + 1.0)  # 33.30 GiB
    # Reference, forward only, B = 8 (32,768 tokens): weights 2P = 15,231,233,024; one layer
    # 32768 x 98,304 x 2 = 6 GiB; logits 32768 x 152064 x 2 = 9,965,666,304 + one row's fp32 copy and
    # temporary 2 x 4096 x 152064 x 4 = 4,982,833,152; context 1 GiB.
    ref_bytes = 15_231_233_024 + 6 * GIB + 9_965_666_304 + 4_982_833_152
    assert by_role["reference"].peak_gib == pytest.approx(ref_bytes / GIB + 1.0)  # 35.11 GiB


def test_zero0_policy_is_refused_naming_rank_gpu_and_shortfall(qwen_dir):
    # ZeRO-0 replicates everything: 2P + 2P + 12P = 16 x 7,615,616,512 = 121,849,864,192 B = 113.48 GiB of model
    # states alone, plus 3.03 activations + 11.60 logits + 1.0 context = 129.12 GiB on an 80 GiB GPU.
    need = (16 * QWEN25_7B_PARAMS + 1_644_167_168 + 1_610_612_736 + 12_457_082_880) / GIB + 1.0
    with pytest.raises(ValueError) as err:
        check_memory(_cluster_cfg(qwen_dir, "policy.zero_stage=0"))
    message = str(err.value)
    assert f"node 0 GPU 6: policy[0] needs {need:.1f} GiB (weights 14.2 + grads 14.2 + optimizer 85.1" in message
    assert f"but it has 80 GiB: short by {need - 80:.1f} GiB" in message
    assert message.count("policy[") == 4 and "critic" not in message


def test_engine_whose_fraction_cannot_hold_its_weights_is_refused(qwen_dir):
    # 0.15 x 80 = 12.0 GiB < weights 14.19 + context 1.0 + one 4,096-token sequence 4096 x 57,344 B = 0.22 GiB.
    need = 15_231_233_024 / GIB + 1.0 + 4096 * 57_344 / GIB
    problems = plan_memory(_cluster_cfg(qwen_dir, "rollout.gpu_memory_utilization=0.15")).problems
    assert problems[0] == (f"rollout[0] on node 0 GPU 0: vLLM needs {need:.1f} GiB (weights/tp + context + KV for "
                           f"one 4,096-token sequence) within gpu_memory_utilization 0.15 x 80 GiB = 12.0 GiB: "
                           f"short by {need - 12.0:.1f} GiB")


def test_sleeping_engine_and_policy_peak_in_turn(qwen_dir):
    # Engine i on policy rank i's GPU. Generate: engine 0.5 x 80 = 40 + policy states (47.0 - 3.03 activations
    # - 11.60 logits = 32.33); train: policy 46.96 + the sleeping engine's 2.0. Peak = generate, 72.33 GiB.
    memory = check_memory(_cluster_cfg(qwen_dir, "placement.colocate_engines=true", "rollout.num_engines=4",
                                       "rollout.gpu_memory_utilization=0.5"))
    shared = memory.devices[0]
    assert [s.role for s, _ in shared.members] == ["policy", "rollout"]
    states = (3_807_808_256 * 2 + 22_846_849_536 + 1_000_000_000 + 2_179_989_504) / GIB + 1.0
    assert shared.phase == "generate" and shared.peak_gib == pytest.approx(40.0 + states)
    with pytest.raises(ValueError, match=r"policy\[0\] 32\.3 \+ rollout\[0\] 68\.0 = 100\.3 GiB at the generate"):
        check_memory(_cluster_cfg(qwen_dir, "placement.colocate_engines=true", "rollout.num_engines=4"))


def test_tensor_parallel_engine_splits_weights_and_kv_heads(qwen_dir):
    memory = check_memory(_cluster_cfg(qwen_dir, "rollout.tensor_parallel_size=2", "rollout.num_engines=3"))
    # 3 engines x 2 GPUs + 9 trainer/reference GPUs = 15 GPUs; engine 0 holds GPUs 0-1 of node 0.
    assert memory.bundle_gpus[0] == [0, 1] and memory.placement.bundles[0] == {"GPU": 2, "CPU": 4}
    engine = memory.devices[0].members[0][1]
    # Per GPU: weights P x 2 / 2 = 7.09 GiB; KV 68 - 7.09 - 1 at 2 x 28 x (4/2) x 128 x 2 = 28,672 B per token.
    assert dict(engine.parts)["weights/tp"] == pytest.approx(7_615_616_512 / GIB)
    assert engine.kv_tokens == int((68.0 - 7_615_616_512 / GIB - 1.0) * GIB // 28_672)


def test_missing_model_is_planned_as_unknown_not_guessed(tmp_path):
    cfg = load_config("configs/cluster_qwen2.5_7b.yaml", [f"model.path={tmp_path}/absent",
                                                          "placement.architecture=null"])
    memory = plan_memory(cfg)
    assert "set placement.architecture" in memory.roles.unknown["policy"]
    trainer_gpu = next(d for d in memory.devices if d.members[0][0].role == "policy")
    assert not trainer_gpu.known and trainer_gpu.peak_gib == 0.0 and not memory.problems
    # A vLLM engine's reservation is known without the architecture: 0.85 x 80 GiB.
    assert memory.devices[0].known and memory.devices[0].peak_gib == pytest.approx(68.0)
