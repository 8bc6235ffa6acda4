"""What each `clinical-rl pipeline` stage depends on, as a hash: a completed stage is redone when its hash changes,
and only then (the whole config's hash would redo SFT when only eval.max_new_tokens changed).

    synth   synthesis.* and the seed; not limit (raising it extends the output item by item), nor the keys that
            change how fast or through which endpoint, not what (concurrency, rate limits, timeouts, retries,
            base_url, api_key_env, engine resources), nor output and restart
    sft     sft.* but its resources (num_cpus, zero_stage, gradient_checkpointing, timeout_s), output_subdir and
            data_path (the rows' content counts instead: a re-synthesized or edited file redoes SFT), model.*, seed
    ppo     the settings a resume must keep (`rl.config_record.PROTECTED`; model.path is the SFT model's directory),
            steps, and the sft stage's hash (a new SFT model redoes RL)
    eval    eval.* but its resources, out_dir and the pass/fail keys (max_error_frac, max_consecutive_errors,
            after_training), the seed, and each model evaluated: its path and the hash of the stage that made it
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from clinical_rl.config import RunConfig
from clinical_rl.config_stages import EvalModelConfig
from clinical_rl.rl.config_record import protected_settings, settings_hash

# `EngineConfig` keys that place or size an engine without changing what it generates
ENGINE_RESOURCES = frozenset({"num_engines", "num_cpus", "tensor_parallel_size", "enforce_eager", "kv_cache_gib",
                              "gpu_memory_utilization", "max_restarts"})
SYNTH_IGNORED = frozenset({"limit", "output", "restart", "max_in_flight", "requests_per_min", "tokens_per_min",
                           "timeout_s", "max_retries", "base_url", "api_key_env"})
SFT_IGNORED = frozenset({"num_cpus", "zero_stage", "gradient_checkpointing", "timeout_s", "output_subdir",
                         "data_path"})
EVAL_IGNORED = frozenset({"out_dir", "max_in_flight", "timeout_s", "max_consecutive_errors", "max_error_frac",
                          "after_training"})


def synth_hash(cfg: RunConfig) -> str:
    """The hash of what the synthesis rows depend on (module docstring)."""
    return settings_hash({"synthesis": _section(cfg, "synthesis", SYNTH_IGNORED), "seed": cfg.seed})


def sft_hash(cfg: RunConfig, rows: Path) -> str:
    """The hash of what the SFT model depends on, `rows` being the file it trains on (module docstring)."""
    return settings_hash({"sft": _section(cfg, "sft", SFT_IGNORED), "model": cfg.model.model_dump(mode="json"),
                          "seed": cfg.seed, "rows": file_digest(rows)})


def ppo_hash(ppo_cfg: RunConfig, sft: str | None) -> str:
    """The hash of what the RL policy depends on; `ppo_cfg` is the config the stage runs with, `sft` the sft stage's
    hash when that stage made its model (module docstring)."""
    return settings_hash({"settings": protected_settings(ppo_cfg), "steps": ppo_cfg.steps, "sft": sft})


def eval_hash(cfg: RunConfig, models: Sequence[tuple[EvalModelConfig, str | None]]) -> str:
    """The hash of what the report depends on; `models` pairs each model the pipeline adds with the hash of the
    stage that made it (None: given, like the base model); `eval.models` are part of the eval section."""
    made = [{**model.model_dump(mode="json"), "made_by": digest} for model, digest in models]
    return settings_hash({"eval": _section(cfg, "eval", EVAL_IGNORED), "seed": cfg.seed, "models": made})


def file_digest(path: Path) -> str | None:
    """12 hex digits of the SHA-256 of the file's bytes; None when there is no such file."""
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def _section(cfg: RunConfig, name: str, ignored: Collection[str]) -> dict[str, Any]:
    section = {k: v for k, v in getattr(cfg, name).model_dump(mode="json").items() if k not in ignored}
    if isinstance(section.get("engine"), dict):
        section["engine"] = {k: v for k, v in section["engine"].items() if k not in ENGINE_RESOURCES}
    return section
