"""Memory plan: exact parameter counts, per-role formulas and the Qwen2.5-7B PPO layout on 2 x 8 H100 80 GiB; the
run's totals, its checkpoints on disk (GB = 10**9 bytes) and the pipeline's stages.

Golden numbers are derived by hand beside each assertion (docs/memory.md has the formulas). GiB = 2**30 bytes.
Pure: no Ray, no GPU.
"""

import json

import pytest
import torch

from clinical_rl.config import TrainerConfig
from clinical_rl.config_files import load_config
from clinical_rl.launch.disk import checkpoint_disk, deepspeed_checkpoint_bytes, format_checkpoint_disk
from clinical_rl.launch.layout import check_memory, format_totals, plan_memory, run_totals
from clinical_rl.launch.memory import BUILTIN_ARCHITECTURES, load_architecture, trainer_estimate
from clinical_rl.launch.stages import format_pipeline_stages, pipeline_stages

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
# Critic: P_c = P - 544,997,376 (no LM head) + 3,585 (value head) = 7,070,622,721.
QWEN25_7B_CRITIC_PARAMS = QWEN25_7B_PARAMS - 544_997_376 + 3_585

# configs/cluster_qwen2.5_7b.yaml, per GPU, without the 1 GiB CUDA context:
# Policy rank, ZeRO-3 over N = 4, bf16, B = 2, T = 4096 (8,192 tokens), checkpointing:
#   weights 2P/4 = 3,807,808,256; grads 2P/4 = 3,807,808,256; optimizer 12P/4 = 22,846,849,536
#   activations: layer inputs 28 x 8192 x 3584 x 2 = 1,644,167,168 + one layer recomputed
#     8192 x (6·3584 + 2·512 + 4·18944 = 98,304) x 2 = 1,610,612,736
#   logits 8192 x 152064 x (2 + 8) = 12,457,082,880
#   ZeRO buffers: reduce bucket 5e8 x 2 = 1e9 + gathered 2 x (152064·3584 = 544,997,376) x 2 = 2,179,989,504
POLICY_BYTES = (3_807_808_256 * 2 + 22_846_849_536 + 1_644_167_168 + 1_610_612_736 + 12_457_082_880
                + 1_000_000_000 + 2_179_989_504)
# Critic, no vocabulary logits: weights, grads 2P_c/4 = 3,535,311,360.5 each; optimizer 12P_c/4 = 21,211,868,163
CRITIC_BYTES = (3_535_311_360.5 * 2 + 21_211_868_163 + 1_644_167_168 + 1_610_612_736 + 1_000_000_000
                + 2_179_989_504)
# Reference, forward only, B = 8 (32,768 tokens): weights 2P = 15,231,233,024; one layer 32768 x 98,304 x 2 = 6 GiB;
# logits 32768 x 152064 x 2 = 9,965,666,304 + one row's fp32 copy and temporary 2 x 4096 x 152064 x 4 = 4,982,833,152.
REFERENCE_BYTES = 15_231_233_024 + 6 * GIB + 9_965_666_304 + 4_982_833_152


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

    assert by_role["policy"].peak_gib == pytest.approx(POLICY_BYTES / GIB + 1.0)  # 46.96 GiB
    assert by_role["critic"].peak_gib == pytest.approx(CRITIC_BYTES / GIB + 1.0)  # 33.33 GiB
    assert by_role["reference"].peak_gib == pytest.approx(REFERENCE_BYTES / GIB + 1.0)  # 35.11 GiB


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


@pytest.mark.parametrize("stage, optimizer_bytes", [(0, 8), (1, 12), (2, 12), (3, 8)])
def test_fp32_optimizer_has_a_master_copy_only_where_deepspeed_clones_one(stage, optimizer_bytes):
    # fp32: no ZeRO and ZeRO-3 update the fp32 parameters in place (m, v: 8 B); ZeRO 1-2 clone an fp32 partition (12 B).
    arch = load_architecture("SmolLM2-135M")
    cfg = TrainerConfig(world_size=2, zero_stage=stage)
    optimizer = dict(trainer_estimate(arch, cfg, "float32", 64, gpu=True).parts)["optimizer"]
    assert optimizer == pytest.approx(134_515_008 * optimizer_bytes / (2 if stage else 1) / GIB)


def test_7b_totals_per_resource_and_per_node(qwen_dir):
    cfg = _cluster_cfg(qwen_dir)
    totals = run_totals(plan_memory(cfg), cfg)
    # 15 GPU bundles x 4 CPUs + 4 reward actors x 0.25 = 61 CPUs. Node 0: 6 engines + policy 0-1 (8 GPUs, 32 CPUs)
    # and the 4 reward actors (1 CPU); node 1: policy 2-3, 4 critic ranks, the reference (7 GPUs, 28 CPUs).
    assert (totals.bundles, totals.gpus, totals.cpus) == (19, 15, 61)
    assert [(n.node, n.gpus, n.cpus) for n in totals.nodes] == [(0, 8, 33), (1, 7, 28)]
    policy, critic, reference = (b / GIB + 1.0 for b in (POLICY_BYTES, CRITIC_BYTES, REFERENCE_BYTES))
    node0, node1 = 6 * 68.0 + 2 * policy, 2 * policy + 4 * critic + reference  # 501.9, 262.4 GiB
    assert totals.nodes[0].memory_gib == pytest.approx(node0) and totals.nodes[0].largest_gib == pytest.approx(68.0)
    assert totals.nodes[1].memory_gib == pytest.approx(node1) and totals.nodes[1].largest_gib == pytest.approx(policy)
    assert totals.gpu_memory_gib == pytest.approx(node0 + node1) and totals.host_memory_gib is None
    text = "\n".join(format_totals(totals, cfg))
    assert f"15 GPUs, 61 CPUs, GPU memory {node0 + node1:.1f} GiB" in text
    assert f"node 0: 8 of 8 GPUs, 33 of 64 CPUs, GPU memory {node0:.1f} GiB (fullest GPU 68.0)" in text
    assert f"node 1: 7 of 8 GPUs, 28 of 64 CPUs, GPU memory {node1:.1f} GiB" in text


# configs/demo.yaml on CPU: SmolLM2-135M, P = 134,515,008, bf16; L = 30, one layer saves a = 6·576 + 2·192 + 4·1536
# = 9,984 elements per token; V = 49,152.
SMOL_PARAMS = 134_515_008
DEMO_ENGINE_BYTES = 2 * SMOL_PARAMS + GIB  # weights 269,030,016 + kv_cache_gib 1
# Policy, ZeRO-0, B = 8 x T = 1024 = 8,192 tokens, no checkpointing: 16P = 2,152,240,128; activations
# 30 x 8192 x 9984 x 2 = 4,907,335,680; logits 8192 x 49152 x (2 + 8) = 4,026,531,840.
DEMO_POLICY_BYTES = 16 * SMOL_PARAMS + 4_907_335_680 + 4_026_531_840


def test_demo_totals_on_one_cpu_node():
    cfg = load_config("configs/demo.yaml")
    totals = run_totals(plan_memory(cfg), cfg)
    # rollout 1 CPU + policy 1 + reward 0.25 (GRPO without KL: no critic, no reference). The CPU engine holds its
    # weights and KV cache throughout, the policy peaks in train: 11.58 GiB of host memory.
    host = (DEMO_ENGINE_BYTES + DEMO_POLICY_BYTES) / GIB
    assert (totals.bundles, totals.gpus, totals.cpus, totals.gpu_memory_gib) == (3, 0, 2.25, None)
    assert totals.host_memory_gib == pytest.approx(host) and totals.nodes[0].memory_gib == pytest.approx(host)
    assert format_totals(totals, cfg)[0] == f"  totals: 3 bundles on 1 node(s): 2.25 CPUs, host memory {host:.1f} GiB"


@pytest.mark.parametrize("stage, dtype, measured", [
    # `engine.save_checkpoint` of a 4,999,424-parameter Llama after one AdamW step (DeepSpeed 0.19.8, CPU, gloo,
    # one rank; docs/memory.md "Checkpoints on disk"): the bytes of all its files.
    (0, "bfloat16", 70_055_113), (0, "float32", 60_044_455), (1, "bfloat16", 70_012_330),
    (1, "float32", 80_011_044), (2, "bfloat16", 70_012_330), (2, "float32", 80_011_108),
    (3, "bfloat16", 60_018_918), (3, "float32", 60_018_720),
])
def test_deepspeed_checkpoint_formula_matches_measured_files(stage, dtype, measured):
    formula = deepspeed_checkpoint_bytes(4_999_424, dtype, stage)
    assert formula <= measured < formula * 1.001  # pickling and ZeRO padding only


def test_7b_checkpoint_disk(qwen_dir):
    cfg = _cluster_cfg(qwen_dir)
    roles = plan_memory(cfg).roles  # the architectures; the variants below change no model
    disk = checkpoint_disk(cfg, roles)
    # ZeRO-3 bf16 writes 12 B per parameter (fp32 master, m, v; no bf16 weights): policy 12P, critic 12P_c; the HF
    # policy 2P. 500 steps // save_every 50 = 10 saves, keep_checkpoints 1.
    policy, critic, hf = 12 * QWEN25_7B_PARAMS, 12 * QWEN25_7B_CRITIC_PARAMS, 2 * QWEN25_7B_PARAMS
    assert disk.parts == (("policy DeepSpeed", policy), ("critic DeepSpeed", critic), ("policy HF", hf))
    one = policy + critic + hf  # 91.39 + 84.85 + 15.23 = 191.47 GB
    assert (disk.saves, disk.checkpoint_bytes, disk.final_bytes) == (10, one, hf)
    assert disk.peak_bytes == 2 * one and disk.end_bytes == one + hf  # a save holds 2; after: 1 + final policy
    text = format_checkpoint_disk(disk, cfg)
    assert (f"one checkpoint: {one / 1e9:.1f} GB = policy DeepSpeed 91.4 + critic DeepSpeed 84.8 + policy HF 15.2"
            in text)
    assert f"peak {2 * one / 1e9:.1f} GB, {(one + hf) / 1e9:.1f} GB after the run" in text

    keep3 = checkpoint_disk(_cluster_cfg(qwen_dir, "keep_checkpoints=3"), roles)
    assert keep3.peak_bytes == 4 * one and keep3.end_bytes == 3 * one + hf
    # 2 saves, never pruned: the peak is after the run, both checkpoints and the final policy.
    every_200 = _cluster_cfg(qwen_dir, "keep_checkpoints=3", "save_every=200")
    two_saves = checkpoint_disk(every_200, roles)
    assert two_saves.saves == 2 and two_saves.peak_bytes == two_saves.end_bytes == 2 * one + hf
    assert "2 saves (every 200 of 500 steps), all kept" in format_checkpoint_disk(two_saves, every_200)
    # ZeRO-0 adds the bf16 weights to the policy (14P); GRPO has no critic; save_every 0 leaves the final policy.
    zero0 = checkpoint_disk(_cluster_cfg(qwen_dir, "policy.zero_stage=0"), roles)
    assert zero0.parts[0] == ("policy DeepSpeed", 14 * QWEN25_7B_PARAMS)
    grpo_cfg = _cluster_cfg(qwen_dir, "algo.advantage=grpo", "algo.n_samples_per_prompt=4")
    assert [name for name, _ in checkpoint_disk(grpo_cfg, roles).parts] == ["policy DeepSpeed", "policy HF"]
    final_only = checkpoint_disk(_cluster_cfg(qwen_dir, "save_every=0"), roles)
    assert final_only.saves == 0 and final_only.peak_bytes == final_only.end_bytes == hf


def test_checkpoint_disk_of_an_unknown_model_says_why(tmp_path):
    cfg = load_config("configs/cluster_qwen2.5_7b.yaml", [f"model.path={tmp_path}/absent",
                                                          "placement.architecture=null"])
    disk = checkpoint_disk(cfg, plan_memory(cfg).roles)
    assert isinstance(disk, str) and "set placement.architecture" in disk
    assert format_checkpoint_disk(disk, cfg).startswith("disk of the PPO run (GB = 10^9 bytes): UNKNOWN (")


def test_demo_pipeline_stages():
    cfg = load_config("configs/demo.yaml")
    stages = pipeline_stages(cfg, plan_memory(cfg))
    assert [s.name for s in stages] == ["synth", "sft", "ppo", "eval"]
    synth, sft, ppo, evaluation = stages
    assert (synth.gpus, synth.cpus, synth.memory_gib) == (0, 0.0, 0.0) and "knowledge-base" in synth.what
    # SFT: 1 rank x 2 CPUs, ZeRO-0, B = 4 x 512 = 2,048 tokens: 16P + 30 x 2048 x 9984 x 2 = 1,226,833,920
    # + 2048 x 49152 x 10 = 1,006,632,960 -> 4.08 GiB; it writes the HF model, 2P.
    sft_bytes = 16 * SMOL_PARAMS + 1_226_833_920 + 1_006_632_960
    assert (sft.cpus, sft.disk_bytes) == (2.0, 2 * SMOL_PARAMS) and sft.memory_gib == pytest.approx(sft_bytes / GIB)
    assert ppo.cpus == 2.25 and ppo.memory_gib == pytest.approx((DEMO_ENGINE_BYTES + DEMO_POLICY_BYTES) / GIB)
    assert ppo.disk_bytes == 2 * SMOL_PARAMS  # save_every 0: the final policy only
    # eval: one engine (1 CPU) of base, sft, sft+rl in turn, each weights 2P + kv_cache_gib 1.
    assert evaluation.cpus == 1.0 and evaluation.memory_gib == pytest.approx(DEMO_ENGINE_BYTES / GIB)
    assert "(base, sft, sft+rl)" in evaluation.what
    assert not any(s.problems for s in stages)
    text = format_pipeline_stages(stages, cfg)
    # The stages take turns: the peak is the largest stage (ppo), not the sum; disk adds up: 2 x 2P = 0.54 GB.
    host = (DEMO_ENGINE_BYTES + DEMO_POLICY_BYTES) / GIB
    assert text.splitlines()[-1] == f"  peak: 2.25 CPUs (ppo), {host:.1f} GiB host memory (ppo); disk 0.5 GB at most"


def test_7b_pipeline_stages_name_what_does_not_fit(qwen_dir):
    cfg = _cluster_cfg(qwen_dir, "eval.engine={gpu_memory_utilization: 0.15, max_model_len: 4096, dtype: bfloat16}",
                       "eval.models=[{label: gpt, model: gpt-4o}]")
    synth, sft, ppo, evaluation = pipeline_stages(cfg, plan_memory(cfg))
    assert synth.cpus == 0 and "endpoint" in synth.what
    # SFT with sft's defaults: 1 rank, ZeRO-0 (16P = 121,849,864,192), B = 1 x 4096 tokens without checkpointing:
    # activations 28 x 4096 x 98,304 x 2 = 22,548,578,304, logits 4096 x 152064 x 10 = 6,228,541,440, context 1 GiB.
    need = (16 * QWEN25_7B_PARAMS + 22_548_578_304 + 6_228_541_440) / GIB + 1.0  # 141.3 GiB
    assert (sft.gpus, sft.memory_gib) == (1, pytest.approx(need))
    assert sft.problems == (f"sft on node 0: needs {need:.1f} GiB of each GPU, which has 80 GiB: short by "
                            f"{need - 80:.1f} GiB",)
    assert (ppo.gpus, ppo.cpus, ppo.memory_gib, ppo.problems) == (15, 61, pytest.approx(68.0), ())
    # eval engines at 0.15 x 80 = 12 GiB cannot hold weights 14.19 + context 1 + one 4,096-token sequence (0.22),
    # for base, sft and sft+rl alike.
    engine_need = 15_231_233_024 / GIB + 1.0 + 4096 * 57_344 / GIB
    assert evaluation.memory_gib == pytest.approx(12.0) and len(evaluation.problems) == 3
    assert evaluation.problems[0].startswith(f"eval engine of base: vLLM needs {engine_need:.1f} GiB")
    assert evaluation.what.endswith("; endpoints, no local actors: gpt")
    text = format_pipeline_stages([synth, sft, ppo, evaluation], cfg)
    assert f"PROBLEM: sft on node 0: needs {need:.1f} GiB" in text
    assert f"  peak: 15 GPUs (ppo), 61 CPUs (ppo), {need:.1f} GiB on its fullest GPU (sft);" in text
