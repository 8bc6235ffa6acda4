"""`clinical-rl pipeline`: synthesis -> SFT -> PPO -> evaluation from one config, each stage skippable and resumable.

    synthesize(cases)                  -> output_dir/synthesis.jsonl     (resumes item by item)
    sft(model, synthesis rows)         -> output_dir/sft/                (skipped once complete)
    ppo(sft model)                     -> output_dir/ppo/policy/         (skipped once complete)
    eval(base, sft, policy)            -> output_dir/eval/report.md      (skipped once complete)

A stage is complete when its directory holds the `.complete` marker, written only after the stage's last file; the
marker records the hash of the settings the stage depends on (`pipeline_hashes`). A rerun skips a complete stage
whose hash is unchanged. When it changed, the stage's directory is moved aside to `<dir>.stale-<old hash>` (never
deleted: it may hold hours of work) and the stage runs again from scratch; for ppo this also keeps the driver from
resuming checkpoints trained under other settings. The synthesis output resumes item by item, so its hash is
recorded beside it (`<output>.config_hash`) when synthesis starts, and a change moves the output aside the same way.
A marker or output from an older version, without a hash, counts as made under the current settings (a note says
so) and records their hash from then on.

A stage killed before its marker reruns; ppo then resumes from its latest checkpoint, which the driver refuses
when a setting a resume must keep has changed (`rl/config_record.py`). The eval stage is complete only when no
model's errors on a benchmark pass `eval.max_error_frac`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from clinical_rl.config import RunConfig
from clinical_rl.config_stages import EvalModelConfig
from clinical_rl.eval.records import REPORT
from clinical_rl.models import check_model_dir
from clinical_rl.launch.cluster import connect_ray, shutdown_ray
from clinical_rl.pipeline_hashes import eval_hash, ppo_hash, sft_hash, synth_hash

if TYPE_CHECKING:
    from clinical_rl.eval.runner import EvalResult

log = logging.getLogger(__name__)
COMPLETE = ".complete"
HASH_KEY = "config_hash"
SYNTHESIS_HASH_SUFFIX = ".config_hash"


@dataclass(frozen=True)
class PipelineResult:
    synthesis: Path | None
    sft_model: Path | None
    policy: Path | None
    report: Path | None


def run_pipeline(cfg: RunConfig) -> PipelineResult:
    """Run `cfg.pipeline.stages` in order; each stage starts from the model the previous one produced.

    Raises:
        ValueError: bad input to a stage, a resume the driver refuses, or an evaluation whose errors pass
            `eval.max_error_frac` (the eval stage is then not marked complete).
        FileNotFoundError: a missing model directory or data file.
    """
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
    sft_digest = ppo_digest = None
    if "synth" in stages:
        synthesis = synthesis_output(cfg)
        _start_synthesis(synthesis, synth_hash(cfg))
        print(synthesize(cfg), flush=True)
    if "sft" in stages:
        sft_model = out / cfg.sft.output_subdir
        data = Path(cfg.sft.data_path) if cfg.sft.data_path else synthesis_output(cfg)
        sft_digest = sft_hash(cfg, data)
        _stage("sft", sft_model, sft_digest, lambda: run_sft(cfg, data, model, sft_model))
        model = sft_model
    if "ppo" in stages:
        ppo_dir = out / "ppo"
        ppo_cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": str(model)}),
                                         "output_dir": str(ppo_dir)})
        ppo_digest = ppo_hash(ppo_cfg, sft_digest)
        _stage("ppo", ppo_dir, ppo_digest, lambda: run(ppo_cfg))
        policy = ppo_dir / "policy"
    if "eval" in stages:
        trained = [(EvalModelConfig(label="base", path=cfg.model.path), None)]
        trained += [(EvalModelConfig(label=label, path=str(path)), digest)
                    for label, path, digest in (("sft", sft_model, sft_digest),
                                                ("sft+rl" if sft_model else "rl", policy, ppo_digest)) if path]
        eval_dir = Path(cfg.eval.out_dir or out / "eval")
        eval_cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"out_dir": str(eval_dir)})})
        curve = out / "ppo" / "metrics.jsonl"  # the RL run's per-step metrics: the report's training curve
        curve = curve if policy and curve.is_file() else None
        models = [*(m for m, _ in trained), *cfg.eval.models]
        _stage("eval", eval_dir, eval_hash(eval_cfg, trained),
               lambda: _check_eval_errors(run_eval(eval_cfg, models, curve), cfg.eval.max_error_frac))
        report = eval_dir / REPORT
    return PipelineResult(synthesis, sft_model, policy, report)


def _check_eval_errors(result: EvalResult, max_error_frac: float) -> None:
    """Raises ValueError naming every (model, benchmark) whose failed answers pass `max_error_frac`: an evaluation
    that mostly failed must not pass for a finished stage."""
    failed = result.too_many_errors(max_error_frac)
    if failed:
        lines = [f"model {o.model!r} on benchmark {o.benchmark!r}: {o.errors} of {o.n} answers failed "
                 f"({o.error_frac:.0%}), above eval.max_error_frac={max_error_frac:g}; first error: {o.first_error}"
                 for o in failed]
        raise ValueError(f"eval: too many failed answers (report: {result.report}); the eval stage is not marked "
                         "complete, a rerun evaluates again:\n  " + "\n  ".join(lines))


def _stage(name: str, directory: Path, digest: str, work: Callable[[], object]) -> None:
    """Run `work` unless `directory` holds a completed run of this stage under the settings hash `digest`; a
    completed run under other settings is moved aside first."""
    marker = directory / COMPLETE
    if marker.is_file():
        recorded = _recorded_hash(marker.read_text().splitlines())
        if recorded is None:
            _note(f"{name}: {marker} records no config hash (written by an older version): taken as complete under "
                  f"the current settings, whose hash {digest} it records from now on")
            marker.write_text(_marker(name, digest))
        if recorded in (None, digest):
            log.info("%s: %s is complete, skipping (delete it to redo)", name, directory)
            print(f"{name}: complete in {directory}, skipped", flush=True)
            return
        _move_aside(name, directory, recorded, digest)
    work()
    marker.write_text(_marker(name, digest))


def _start_synthesis(output: Path, digest: str) -> None:
    """Before synthesis appends to `output`: move it aside if it was written under other settings, and record
    `digest` beside it."""
    recorded_file = output.with_name(output.name + SYNTHESIS_HASH_SUFFIX)
    if output.exists():
        recorded = _recorded_hash(recorded_file.read_text().splitlines()) if recorded_file.is_file() else None
        if recorded is None:
            _note(f"synth: {output} has no recorded config hash (written by an older version or `clinical-rl "
                  f"synth`): resumed under the current settings, whose hash {digest} is recorded from now on")
        elif recorded != digest:
            _move_aside("synth", output, recorded, digest)
    output.parent.mkdir(parents=True, exist_ok=True)
    recorded_file.write_text(f"{HASH_KEY}: {digest}\n")


def _marker(name: str, digest: str) -> str:
    return f"{name}\n{HASH_KEY}: {digest}\n"


def _recorded_hash(lines: Sequence[str]) -> str | None:
    """The hash in a marker's `config_hash: <hash>` line; None in markers of older versions (the stage's name only)."""
    for line in lines:
        key, sep, value = line.partition(":")
        if sep and key.strip() == HASH_KEY:
            return value.strip()
    return None


def _move_aside(name: str, path: Path, recorded: str, digest: str) -> None:
    """Rename `path` to `<path>.stale-<recorded>` (numbered when that exists) and say so."""
    aside = path.with_name(f"{path.name}.stale-{recorded}")
    n = 2
    while aside.exists():
        aside, n = path.with_name(f"{path.name}.stale-{recorded}-{n}"), n + 1
    path.rename(aside)
    _note(f"{name}: its settings changed since {path} was made (config hash {recorded} -> {digest}): moved it to "
          f"{aside}; running {name} again")


def _note(message: str) -> None:
    """On the console, where the pipeline's progress is; the log has it too."""
    log.info("%s", message)
    print(message, flush=True)
