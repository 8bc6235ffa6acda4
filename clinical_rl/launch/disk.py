"""What a PPO run writes under `output_dir`: its checkpoints (`rl/checkpoint.py`) and the final policy.

Pure arithmetic from the parameter counts of `launch.memory`; the bytes per parameter of each file were measured
on DeepSpeed 0.19 checkpoints (docs/memory.md, "Checkpoints on disk"). Sizes are GB = 10**9 bytes, as `df -H`
and `du --si` print them; the small files (tokenizer, config.json, state.json, DeepSpeed's recovery script) are
left out.
"""

from __future__ import annotations

from dataclasses import dataclass

from clinical_rl.config import RunConfig
from clinical_rl.launch.memory import BYTES, Architecture, RoleMemory

GB = 10**9


def deepspeed_checkpoint_bytes(params: int, dtype: str, zero_stage: int) -> int:
    """Bytes of one trainer's `engine.save_checkpoint` directory, all ranks' files together.

    The model states file holds the module's weights in the training dtype, b·P (ZeRO-3: placeholders only, its
    weights live in the optimizer files); the optimizer files hold AdamW's m and v, 8P, plus the fp32 master
    copy, 4P, which fp32 without ZeRO does not have (its parameters are the master). Measured at P = 4,999,424:
    ZeRO 0: 14.01 P (bf16), 12.01 P (fp32); ZeRO 1-2: 14.00 P (bf16), 16.00 P (fp32); ZeRO 3: 12.01 P (both).
    """
    weights = 0 if zero_stage == 3 else BYTES[dtype]
    optimizer = 8 if dtype == "float32" and zero_stage == 0 else 12
    return (weights + optimizer) * params


@dataclass(frozen=True)
class CheckpointDisk:
    """The disk a run's checkpoints and final policy take, bytes; `parts` are the files of one checkpoint."""

    parts: tuple[tuple[str, int], ...]  # (what, bytes) of one checkpoint directory
    final_bytes: int  # output_dir/policy, the HF policy written at the end
    saves: int  # checkpoints the run writes: steps // save_every
    keep: int  # keep_checkpoints

    @property
    def checkpoint_bytes(self) -> int:
        return sum(size for _, size in self.parts)

    @property
    def end_bytes(self) -> int:
        """After the run: the newest `keep` checkpoints and the final policy."""
        return min(self.saves, self.keep) * self.checkpoint_bytes + self.final_bytes

    @property
    def peak_bytes(self) -> int:
        """During a save the new checkpoint is complete before the oldest is deleted (`latest` moves first, so a
        kill never leaves the run without one): keep + 1 checkpoints at once."""
        return max(min(self.saves, self.keep + 1) * self.checkpoint_bytes, self.end_bytes)


def checkpoint_disk(cfg: RunConfig, roles: RoleMemory) -> CheckpointDisk | str:
    """Disk of the run's checkpoints (save_every > 0) and final policy, from the architectures in `roles`
    (`MemoryPlan.roles`); the reason instead when the policy's architecture, or the critic's, is unknown."""
    policy, critic = roles.architectures.get("policy"), roles.architectures.get("critic")
    use_critic = cfg.algo.use_critic
    if policy is None or (use_critic and critic is None):
        return roles.unknown.get("policy") or roles.unknown["critic"]
    dtype = cfg.model.dtype
    hf = hf_model_bytes(policy, dtype)
    parts = [("policy DeepSpeed", deepspeed_checkpoint_bytes(policy.num_params(), dtype, cfg.policy.zero_stage))]
    if use_critic:
        parts.append(("critic DeepSpeed",
                      deepspeed_checkpoint_bytes(critic.critic_params(), dtype, cfg.critic.zero_stage)))
    parts.append(("policy HF", hf))
    saves = cfg.steps // cfg.save_every if cfg.save_every else 0
    return CheckpointDisk(tuple(parts), hf, saves, cfg.keep_checkpoints)


def hf_model_bytes(arch: Architecture, dtype: str) -> int:
    """A HF directory's safetensors: every parameter once in the training dtype (tied weights stored once)."""
    return arch.num_params() * BYTES[dtype]


def format_checkpoint_disk(disk: CheckpointDisk | str, cfg: RunConfig) -> str:
    """One checkpoint's files, how many the run keeps, its peak and what stays after it, GB."""
    if isinstance(disk, str):
        return f"disk of the PPO run (GB = 10^9 bytes): UNKNOWN ({disk})"
    lines = ["disk of the PPO run, under its output_dir (GB = 10^9 bytes):"]
    if disk.saves:
        parts = " + ".join(f"{name} {size / GB:.1f}" for name, size in disk.parts)
        lines.append(f"  one checkpoint: {disk.checkpoint_bytes / GB:.1f} GB = {parts}")
        kept = (f"the newest {disk.keep} kept (keep_checkpoints), {disk.keep + 1} at once during a save: the oldest "
                "is deleted only after `latest` moves to the new one" if disk.saves > disk.keep else "all kept")
        lines.append(f"  checkpoints/: {disk.saves} saves (every {cfg.save_every} of {cfg.steps} steps), {kept}")
    else:
        lines.append("  no checkpoints (" + (f"save_every {cfg.save_every} > steps {cfg.steps})" if cfg.save_every
                                             else "save_every: 0)"))
    lines.append(f"  policy/ (the final policy, HF): {disk.final_bytes / GB:.1f} GB")
    lines.append(f"  peak {disk.peak_bytes / GB:.1f} GB, {disk.end_bytes / GB:.1f} GB after the run")
    return "\n".join(lines)
