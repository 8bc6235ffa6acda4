"""Memory of each role instance on its device, from the model's architecture and the run's config.

Pure arithmetic (no Ray, no CUDA): `clinical-rl plan` and `launch.layout.check_memory` use it before anything
starts. Every formula, its source and its assumptions are in `docs/memory.md`; sizes are GiB (2**30 bytes)
unless a name says otherwise. Symbols: P parameters, b bytes per element of the compute dtype, N data-parallel
ranks, h hidden size, L layers, I MLP width, V vocabulary, B micro-batch, T tokens per sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clinical_rl.config import ReferenceConfig, RunConfig, TrainerConfig
from clinical_rl.config_base import EngineConfig
from clinical_rl.models import EMBEDDED, resolve_model_path

GIB = 2**30
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
CUDA_CONTEXT_GIB = 1.0  # CUDA context, cuBLAS workspace and NCCL communicators of one GPU process (assumed)
VLLM_ASLEEP_GIB = 2.0  # a sleeping vLLM engine (level 1): context and CUDA graphs stay, weights and KV go (assumed)
DS_REDUCE_BUCKET = 500_000_000  # elements; DeepSpeed's default `reduce_bucket_size` for ZeRO 1-3

# Well-known architectures, for planning where `model.path` is not on this machine (`placement.architecture`).
# Values are the models' published config.json fields.
BUILTIN_ARCHITECTURES: dict[str, dict[str, object]] = {
    "SmolLM2-135M": dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, vocab_size=49152,
                         tie_word_embeddings=True),
    "Qwen2.5-1.5B": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "Qwen2.5-7B": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    "Llama-3-8B": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
}
DECODER_TYPES = ("llama", "mistral", "qwen2", "qwen3")  # the layouts `Architecture.num_params` counts exactly


@dataclass(frozen=True)
class Architecture:
    """The shape facts of a decoder-only transformer that its memory depends on."""

    name: str  # where it came from: a config.json path or a built-in name
    hidden: int  # h
    layers: int  # L
    heads: int
    kv_heads: int  # GQA: K/V heads (== heads without GQA)
    head_dim: int
    intermediate: int  # I, the SwiGLU width
    vocab: int  # V
    tied: bool  # LM head shares the embedding matrix
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool  # Qwen3: RMSNorm over each head's q and k

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def layer_params(self) -> int:
        """One decoder layer: q/k/v/o projections (+ biases), gate/up/down, two RMSNorms (+ q/k norms)."""
        q, kv = self.heads * self.head_dim, self.kv_dim
        attn = self.hidden * (q + 2 * kv) + q * self.hidden
        attn += (q + 2 * kv) * self.qkv_bias + self.hidden * self.o_bias + 2 * self.head_dim * self.qk_norm
        mlp = 3 * self.hidden * self.intermediate + (2 * self.intermediate + self.hidden) * self.mlp_bias
        return attn + mlp + 2 * self.hidden

    def num_params(self) -> int:
        """P of the causal LM: embeddings, L layers, final norm, LM head unless tied (counted once)."""
        embed = self.vocab * self.hidden
        return embed * (1 if self.tied else 2) + self.layers * self.layer_params() + self.hidden

    def critic_params(self) -> int:
        """The critic: the base model without the LM head, plus a value head Linear(h, 1) with bias."""
        return self.num_params() - (0 if self.tied else self.vocab * self.hidden) + self.hidden + 1

    def layer_activation_elems(self) -> int:
        """Elements one layer saves for backward per token (Korthikanti et al. 2022 §4.1, adapted; docs/memory.md).

        Two norm inputs 2h; attention: QKV input h, Q h, K and V 2·kv_dim, fused-attention output h (no s²
        scores: FlashAttention/SDPA recompute them); SwiGLU MLP: input h, gate, up, SiLU(gate), product 4I.
        """
        return 6 * self.hidden + 2 * self.kv_dim + 4 * self.intermediate

    def kv_bytes_per_token(self, bytes_per_elem: int, tp: int) -> int:
        """K and V of every layer for one token on one of `tp` GPUs (heads split by TP, replicated below 1)."""
        heads_per_gpu = max(1, self.kv_heads // tp)
        return 2 * self.layers * heads_per_gpu * self.head_dim * bytes_per_elem


def architecture_from_hf(hf_config: object, name: str) -> Architecture:
    """An `Architecture` from a transformers `PretrainedConfig`; ValueError for a layout we do not count."""
    get = hf_config.__dict__.get
    model_type = get("model_type") or type(hf_config).model_type
    if model_type not in DECODER_TYPES:
        raise ValueError(f"{name}: model_type {model_type!r} is not one of the counted layouts {DECODER_TYPES}")
    heads = get("num_attention_heads")
    bias = bool(get("attention_bias", False))
    return Architecture(
        name=name, hidden=get("hidden_size"), layers=get("num_hidden_layers"), heads=heads,
        kv_heads=get("num_key_value_heads") or heads, head_dim=get("head_dim") or get("hidden_size") // heads,
        intermediate=get("intermediate_size"), vocab=get("vocab_size"), tied=bool(get("tie_word_embeddings")),
        # Qwen2 always has q/k/v biases and no o_proj bias; Llama/Qwen3 put `attention_bias` on all four.
        qkv_bias=model_type == "qwen2" or bias, o_bias=model_type != "qwen2" and bias,
        mlp_bias=bool(get("mlp_bias", False)), qk_norm=model_type == "qwen3",
    )


def load_architecture(source: str) -> Architecture:
    """A built-in name (`BUILTIN_ARCHITECTURES`), a config.json or a model directory holding one.

    Reads with transformers' AutoConfig, never running remote code. FileNotFoundError when there is none.
    """
    from transformers import AutoConfig

    if source in BUILTIN_ARCHITECTURES:
        values = dict(BUILTIN_ARCHITECTURES[source])
        return architecture_from_hf(AutoConfig.for_model(values.pop("model_type"), **values), source)
    path = Path(source).expanduser()
    config_file = path / "config.json" if path.is_dir() else path
    if not config_file.is_file():
        raise FileNotFoundError(f"{source}: no config.json and not a built-in architecture "
                                f"({', '.join(BUILTIN_ARCHITECTURES)})")
    return architecture_from_hf(AutoConfig.from_pretrained(str(config_file)), str(config_file))


@dataclass(frozen=True)
class Estimate:
    """Memory of one role instance on each device it uses (a TP engine: on each of its GPUs), GiB.

    `parts` is the breakdown at its peak; `idle_gib` what it holds while another phase runs; `phase` is when it
    peaks ("generate" or "train"; None: it holds its peak all the time). GPU engines report `kv_tokens` and
    `min_kv_gib`, the KV cache of one max_model_len sequence, below which vLLM refuses to start.
    """

    parts: tuple[tuple[str, float], ...]
    idle_gib: float
    phase: str | None
    kv_tokens: int | None = None
    min_kv_gib: float = 0.0

    @property
    def peak_gib(self) -> float:
        return sum(gib for _, gib in self.parts)


def trainer_estimate(arch: Architecture, cfg: TrainerConfig, dtype: str, seq_len: int, gpu: bool,
                     lm_head: bool = True) -> Estimate:
    """A DeepSpeed rank with AdamW: model states by ZeRO stage (Rajbhandari et al. 2020, ZeRO §3 and Fig. 1),
    activations at micro-batch x `seq_len` tokens with or without recomputation (Korthikanti et al. 2022, §4),
    and the logits (B, T, V) of the policy (`lm_head`); the critic's value head has no vocabulary term.
    """
    params = arch.num_params() if lm_head else arch.critic_params()
    b, n, stage = BYTES[dtype], cfg.world_size, cfg.zero_stage
    weights = params * b / (n if stage >= 3 else 1)
    grads = params * b / (n if stage >= 2 else 1)
    optimizer = params * optimizer_bytes_per_param(dtype, stage) / (n if stage >= 1 else 1)
    tokens = cfg.micro_batch_size * seq_len
    layer = tokens * arch.layer_activation_elems() * b
    # Checkpointing keeps each layer's input and recomputes one layer at a time in backward (Korthikanti §4.2).
    activations = arch.layers * tokens * arch.hidden * b + layer if cfg.gradient_checkpointing else arch.layers * layer
    # Logits in the compute dtype, the fp32 copy log-softmax saves for backward, and that copy's gradient.
    logits = tokens * arch.vocab * (b + 8) if lm_head else 0.0
    buffers = (DS_REDUCE_BUCKET * b if stage >= 1 else 0) + (_zero3_gathered(arch, b) if stage == 3 else 0)
    context = CUDA_CONTEXT_GIB * GIB if gpu else 0.0
    parts = [("weights", weights), ("grads", grads), ("optimizer", optimizer), ("activations", activations),
             ("logits", logits), ("zero buffers", buffers), ("cuda context", context)]
    return Estimate(_gib(parts), (weights + grads + optimizer + buffers + context) / GIB, "train")


def optimizer_bytes_per_param(dtype: str, zero_stage: int) -> int:
    """Bytes per parameter of AdamW's state in memory, summed over the ranks: m and v in fp32 (8) plus an fp32
    master copy (4; ZeRO §3, K = 12). In fp32 the parameters are their own master without ZeRO and under ZeRO-3
    (stage3.py uses the fp32 partition in place), but ZeRO 1-2 clone theirs (`single_partition_of_fp32_groups`,
    stage_1_and_2.py; DeepSpeed 0.19).
    """
    return 8 if dtype == "float32" and zero_stage in (0, 3) else 12


def _zero3_gathered(arch: Architecture, b: int) -> float:
    """ZeRO-3 gathers full parameters module by module, the one in use and one prefetched: 2 x the largest of a
    decoder layer and the (V, h) embedding / LM head, in the compute dtype."""
    return 2 * max(arch.layer_params(), arch.vocab * arch.hidden) * b


def reference_estimate(arch: Architecture, cfg: ReferenceConfig, dtype: str, seq_len: int, gpu: bool) -> Estimate:
    """Frozen model, forward only: weights, one layer's activations live at a time, the logits (B, T, V) and one
    row's fp32 copy and log-sum-exp temporary (`actors/scoring.py :: token_logprobs` works row by row)."""
    b, tokens = BYTES[dtype], cfg.micro_batch_size * seq_len
    weights = arch.num_params() * b
    context = CUDA_CONTEXT_GIB * GIB if gpu else 0.0
    parts = [("weights", weights), ("activations", tokens * arch.layer_activation_elems() * b),
             ("logits", tokens * arch.vocab * b + 2 * seq_len * arch.vocab * 4), ("cuda context", context)]
    return Estimate(_gib(parts), (weights + context) / GIB, "train")


def engine_estimate(arch: Architecture | None, cfg: EngineConfig, dtype: str, gpu_gib: float | None,
                    phase: str | None, sleeps: bool = False) -> Estimate | None:
    """A vLLM engine on each of its `tensor_parallel_size` GPUs: it reserves gpu_memory_utilization x GPU memory
    and fills what its weights / tp and context leave with KV cache (negative: the weights do not fit). On CPU
    (`gpu_gib` None): weights plus `kv_cache_gib`. Without an architecture only the GPU reservation is known
    (None on CPU).
    """
    tp = cfg.tensor_parallel_size
    if gpu_gib is None:
        if arch is None:
            return None
        weights = arch.num_params() * BYTES[dtype] / GIB
        tokens = int(cfg.kv_cache_gib * GIB // arch.kv_bytes_per_token(BYTES[dtype], 1))
        return Estimate((("weights", weights), ("kv cache", cfg.kv_cache_gib)), weights + cfg.kv_cache_gib,
                        None, tokens)
    reserved = cfg.gpu_memory_utilization * gpu_gib
    # A sleeping engine keeps only its context and graphs; one that never sleeps holds its whole fraction.
    idle = min(VLLM_ASLEEP_GIB, reserved) if sleeps else reserved
    if arch is None:
        return Estimate((("vllm reserved", reserved),), idle, phase)
    weights = arch.num_params() * BYTES[dtype] / tp / GIB
    kv = reserved - weights - CUDA_CONTEXT_GIB
    per_token = arch.kv_bytes_per_token(BYTES[dtype], tp)
    return Estimate((("weights/tp", weights), ("cuda context", CUDA_CONTEXT_GIB), ("kv cache", kv)), idle, phase,
                    max(0, int(kv * GIB // per_token)), cfg.max_model_len * per_token / GIB)


@dataclass(frozen=True)
class RoleMemory:
    """Per role name (`Slot.role`): its estimate, or why it is unknown; and the architectures used."""

    estimates: dict[str, Estimate]
    unknown: dict[str, str]
    architectures: dict[str, Architecture]


def estimate_roles(cfg: RunConfig) -> RoleMemory:
    """Estimates of every role the config starts, at T = rollout.max_model_len tokens per sequence."""
    gpu_gib = cfg.placement.gpu_memory_gib if cfg.device == "gpu" else None
    gpu, seq, dtype = cfg.device == "gpu", cfg.rollout.max_model_len, cfg.model.dtype
    fallback = cfg.placement.architecture
    found: dict[str, Architecture | str] = {
        "policy": model_architecture(cfg.model.path, fallback),
        "critic": model_architecture(cfg.critic.init_from or cfg.model.path, fallback),
    }
    if cfg.reward.judge_engine is not None:
        found["judge"] = model_architecture(cfg.reward.judge_engine.model, None)
    archs = {role: a for role, a in found.items() if isinstance(a, Architecture)}
    unknown = {role: a for role, a in found.items() if isinstance(a, str)}
    policy, critic = archs.get("policy"), archs.get("critic")
    estimates: dict[str, Estimate] = {"reward": Estimate((), 0.0, None)}  # CPU-only, no model
    engine = engine_estimate(policy, cfg.rollout, cfg.rollout.dtype or dtype, gpu_gib, "generate",
                             sleeps=cfg.placement.colocate_engines)
    if engine is not None:
        estimates["rollout"] = engine
    if policy is not None:
        estimates["policy"] = trainer_estimate(policy, cfg.policy, dtype, seq, gpu)
        estimates["reference"] = reference_estimate(policy, cfg.reference, dtype, seq, gpu)
    if critic is not None:
        estimates["critic"] = trainer_estimate(critic, cfg.critic, dtype, seq, gpu, lm_head=False)
    if cfg.reward.judge_engine is not None:
        judge = cfg.reward.judge_engine
        estimate = engine_estimate(archs.get("judge"), judge, judge.dtype or dtype, gpu_gib, None)
        if estimate is not None:
            estimates["judge"] = estimate
    for role in ("rollout", "reference"):
        if "policy" in unknown and role not in estimates:
            unknown[role] = unknown["policy"]
    return RoleMemory(estimates, unknown, archs)


def model_architecture(path: str, fallback: str | None) -> Architecture | str:
    """The architecture of the model at `path` (else of `fallback`), or why it is unknown."""
    model_dir = resolve_model_path(path)
    try:
        if (model_dir / "config.json").is_file():
            return load_architecture(str(model_dir))
        if path == EMBEDDED:  # before `make setup` converts it: the embedded model's published shape
            return load_architecture("SmolLM2-135M")
        if fallback:
            return load_architecture(fallback)
    except (ValueError, FileNotFoundError) as err:
        return str(err)
    return f"{model_dir} has no config.json on this machine; set placement.architecture"


def _gib(parts: list[tuple[str, float]]) -> tuple[tuple[str, float], ...]:
    """Bytes -> GiB, dropping the parts that do not apply (0)."""
    return tuple((name, value / GIB) for name, value in parts if value)
