"""`clinical-rl pipeline`: synthesis -> SFT -> PPO -> evaluation from one config, each stage skippable and resumable.

    synthesize(cases)                  -> output_dir/synthesis.jsonl     (resumes item by item)
    sft(model, synthesis rows)         -> output_dir/sft/                (skipped once complete)
    ppo(sft model)                     -> output_dir/ppo/policy/         (skipped once complete)
    eval(base, sft, policy)            -> output_dir/eval/report.md      (skipped once complete)

A stage is complete when its directory holds the `.complete` marker, written only after the stage's last file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from clinical_rl.config import RunConfig
from clinical_rl.config_stages import EvalModelConfig
from clinical_rl.eval.records import REPORT
from clinical_rl.models import check_model_dir
from clinical_rl.launch.cluster import connect_ray, shutdown_ray

log = logging.getLogger(__name__)
COMPLETE = ".complete"


@dataclass(frozen=True)
class PipelineResult:
    synthesis: Path | None
    sft_model: Path | None
    policy: Path | None
    report: Path | None


def run_pipeline(cfg: RunConfig) -> PipelineResult:
    """Run `cfg.pipeline.stages` in order; each stage starts from the model the previous one produced."""
    stages, out = cfg.pipeline.stages, Path(cfg.output_dir)
    model = check_model_dir(cfg.model.path, "model.path")
    started_ray = connect_ray(cfg.ray)  # one cluster for every stage
    try:
        return _run_stages(cfg, stages, out, model)
    finally:
        if started_ray:
            shutdown_ray()


def _run_stages(cfg: RunConfig, stages: list[str], out: Path, model: Path) -> PipelineResult:
    from clinical_rl.rl.driver import run
    from clinical_rl.eval.runner import run_eval
    from clinical_rl.sft.run import run_sft
    from clinical_rl.synthesis.runner import synthesis_output, synthesize

    synthesis = sft_model = policy = report = None
    if "synth" in stages:
        print(synthesize(cfg), flush=True)
        synthesis = synthesis_output(cfg)
    if "sft" in stages:
        sft_model = out / cfg.sft.output_subdir
        data = Path(cfg.sft.data_path) if cfg.sft.data_path else synthesis_output(cfg)
        _stage("sft", sft_model, lambda: run_sft(cfg, data, model, sft_model))
        model = sft_model
    if "ppo" in stages:
        ppo_dir = out / "ppo"
        ppo_cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": str(model)}),
                                         "output_dir": str(ppo_dir)})
        _stage("ppo", ppo_dir, lambda: run(ppo_cfg))
        policy = ppo_dir / "policy"
    if "eval" in stages:
        trained = [EvalModelConfig(label="base", path=cfg.model.path)]
        trained += [EvalModelConfig(label=label, path=str(path))
                    for label, path in (("sft", sft_model), ("sft+rl" if sft_model else "rl", policy)) if path]
        eval_dir = Path(cfg.eval.out_dir or out / "eval")
        eval_cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"out_dir": str(eval_dir)})})
        curve = out / "ppo" / "metrics.jsonl"  # the RL run's per-step metrics: the report's training curve
        curve = curve if policy and curve.is_file() else None
        _stage("eval", eval_dir, lambda: run_eval(eval_cfg, [*trained, *cfg.eval.models], curve))
        report = eval_dir / REPORT
    return PipelineResult(synthesis, sft_model, policy, report)


def _stage(name: str, directory: Path, work) -> None:
    """Run `work` unless `directory` already holds a completed run of this stage."""
    if (directory / COMPLETE).is_file():
        log.info("%s: %s is complete, skipping (delete it to redo)", name, directory)
        print(f"{name}: complete in {directory}, skipped", flush=True)
        return
    work()
    (directory / COMPLETE).write_text(f"{name}\n")
