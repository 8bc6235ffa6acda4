"""Each (model, benchmark) pair's predictions, kept as soon as they are judged, so that a crash loses at most the
pair in progress and a rerun skips the pairs already done.

    <out_dir>/predictions/<model>-<hash8>/<benchmark>-<hash8>.jsonl       the pair's predictions (`read_predictions`)
    <out_dir>/predictions/<model>-<hash8>/<benchmark>-<hash8>.done.json   what produced them, written after them

`<model>` and `<benchmark>` are the labels made file-safe (`file_slug`: each run of characters other than
`A-Za-z0-9._-` becomes `_`, leading and trailing `.`/`_` are dropped, `model` / `benchmark` when nothing is left);
each `<hash8>` is the first 8 hex digits of the SHA-256 of that same label's UTF-8 bytes, so the two hashes differ:
model `rl/v1` on benchmark `medqa` is `predictions/rl_v1-7c63316d/medqa-c6a95176.jsonl`. Labels are user text,
and two that differ only in characters a file name cannot hold, or only in case on a case-insensitive file system,
must not share a file.

The `.done.json` record holds the inputs that determine the predictions (`pair_inputs`) and the SHA-256 of the
predictions file. A rerun reuses the predictions only when the inputs are equal and the file is the one the record
describes; the inputs are stored in full, not as a hash, so that a mismatch can name the setting that changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clinical_rl.config import RunConfig
from clinical_rl.config_stages import EvalBenchmarkConfig, EvalModelConfig
from clinical_rl.data.cases import Case
from clinical_rl.envs.chain_cases import ChainCase
from clinical_rl.eval.records import BenchmarkSource, ModelSource, Prediction
from clinical_rl.eval.report import read_predictions, write_predictions
from clinical_rl.eval.report_base import atomic_file, file_slug

PREDICTIONS_DIR = "predictions"
OPENAI_DEFAULT_URL = "https://api.openai.com/v1"  # the `openai` client's default when neither base_url nor env says


def model_source(model: EvalModelConfig) -> ModelSource:
    """Where `model`'s answers come from: its model directory resolved to an absolute path (FileNotFoundError,
    naming the key, when it holds no HF model), or the URL the `openai` client will send to (`base_url`, else
    `OPENAI_BASE_URL`, else api.openai.com) and the model name there."""
    from clinical_rl.models import check_model_dir

    if model.path is not None:
        path = check_model_dir(model.path, f"eval.models[{model.label}].path").resolve()
        return ModelSource(model.label, str(path), None, None)
    url = model.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_URL
    return ModelSource(model.label, None, url, model.model)


def benchmark_source(benchmark: EvalBenchmarkConfig, cases: Sequence[Case]) -> BenchmarkSource:
    """A benchmark as evaluated: 'builtin' or its file resolved to an absolute path, and its number of cases."""
    path = benchmark.path if benchmark.path == "builtin" else str(Path(benchmark.path).resolve())
    return BenchmarkSource(benchmark.name, path, len(cases))


def pair_inputs(model: EvalModelConfig, source: ModelSource, benchmark: EvalBenchmarkConfig, cases: Sequence[Case],
                cfg: RunConfig) -> dict[str, Any]:
    """The inputs that determine one pair's predictions, as plain JSON values (nested dicts, no tuples).

    - model: a local directory with a signature of its files (name, size, mtime: a policy retrained into the same
      directory is another model), the engine dtype and context length (both change the text generated); an
      endpoint's URL, model name and tokenizer (which decides how replies are parsed).
    - benchmark: its config (a chain benchmark's `env` included: max_turns, costs) and a SHA-256 of the cases
      loaded (a case file edited in place is another benchmark).
    - generation and judging: max_new_tokens, temperature, cot_prompt, system_prompt, answer_format, judge; the
      run's seed; clinical_rl's version (the verifier's rules come with it).
    """
    ev = cfg.eval
    if source.path is not None:
        model_part: dict[str, Any] = {"path": source.path, "files": _dir_signature(Path(source.path)),
                                      "dtype": ev.engine.dtype or cfg.model.dtype,
                                      "max_model_len": ev.engine.max_model_len}
    else:
        model_part = {"base_url": source.base_url, "model": source.model, "tokenizer": model.tokenizer}
    inputs = {
        "model": model_part,
        "benchmark": benchmark.model_dump(mode="json") | {"cases_sha256": _cases_digest(cases)},
        "generation": {key: getattr(ev, key) for key in
                       ("max_new_tokens", "temperature", "cot_prompt", "system_prompt", "answer_format", "judge")},
        "seed": cfg.seed,
        "version": importlib.metadata.version("clinical_rl"),
    }
    return json.loads(json.dumps(inputs))  # as it reads back from the record: lists, not tuples


def _dir_signature(directory: Path) -> str:
    """SHA-256 over (name, size, mtime_ns) of the directory's files, recursively: cheap, and any rewrite of the
    weights changes it (a copy that keeps the content but not the times also does: a recompute, never a reuse)."""
    entries = sorted((p.relative_to(directory).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
                     for p in directory.rglob("*") if p.is_file())
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def _cases_digest(cases: Sequence[Case]) -> str:
    """SHA-256 of what the model reads and what it is judged against, case by case in order; a chain case's
    examination record too (what the environment answers with), appended only then so that one-turn digests
    stay as they were."""
    rows = [[c.id, c.question, c.answer, dict(c.options) if c.options is not None else None, c.answer_letter,
             c.icd10, c.department, c.language] for c in cases]
    for row, case in zip(rows, cases):
        if isinstance(case, ChainCase):
            row.append([dataclasses.asdict(exam) for exam in case.exams])
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()


def _safe_name(label: str, fallback: str) -> str:
    """`<slug>-<hash8>` of the module docstring: `label` file-safe, then 8 hex digits of its SHA-256."""
    return f"{file_slug(label, fallback)}-{hashlib.sha256(label.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class Stored:
    """What a rerun found of one pair: `predictions` to reuse (None: evaluate it anew) and, when something was
    stored but cannot be reused, `why` (for the console)."""

    predictions: list[Prediction] | None
    why: str | None = None


class PairFiles:
    """The two files of one (model, benchmark) pair under `out_dir`: the predictions at
    `predictions/<model>-<hash8>/<benchmark>-<hash8>.jsonl` and their `.done.json` record beside them (see the
    module docstring)."""

    def __init__(self, out_dir: Path, model: str, benchmark: str) -> None:
        directory = Path(out_dir) / PREDICTIONS_DIR / _safe_name(model, "model")
        stem = _safe_name(benchmark, "benchmark")
        self.model, self.benchmark = model, benchmark
        self.predictions = directory / f"{stem}.jsonl"
        self.record = directory / f"{stem}.done.json"

    def exists(self) -> bool:
        return self.record.is_file()

    def load(self, inputs: dict[str, Any], case_ids: Sequence[str]) -> Stored:
        """The stored predictions when they were made from `inputs` for the cases `case_ids` (in order), with
        their errors (the caller decides what to retry). Never raises for what it finds: an unreadable or
        foreign record is a reason to evaluate again, and says so."""
        if not self.exists():
            return Stored(None)
        try:
            record = json.loads(self.record.read_text(encoding="utf-8"))
            changed = _differences(record["inputs"], inputs)
            if changed:
                return Stored(None, f"made with other inputs: {'; '.join(changed)}")
            if hashlib.sha256(self.predictions.read_bytes()).hexdigest() != record["sha256"]:
                return Stored(None, f"{self.predictions} is not the file its record describes")
            predictions = read_predictions(self.predictions)
        except (OSError, ValueError, KeyError, TypeError) as err:
            return Stored(None, f"unreadable ({type(err).__name__}: {err})")
        if [(p.model, p.benchmark, p.case_id) for p in predictions] != [(self.model, self.benchmark, c)
                                                                          for c in case_ids]:
            return Stored(None, f"{self.predictions} holds other cases or another label")
        return Stored(predictions)

    def save(self, predictions: Sequence[Prediction], inputs: dict[str, Any]) -> None:
        """Write the predictions, then the record naming their inputs and checksum, each atomically. The old
        record goes first, so that a crash in between leaves no record that claims the new file."""
        self.record.unlink(missing_ok=True)
        write_predictions(predictions, self.predictions)
        record = {"model": self.model, "benchmark": self.benchmark, "n": len(predictions),
                  "errors": sum(p.verdict == "error" for p in predictions),
                  "sha256": hashlib.sha256(self.predictions.read_bytes()).hexdigest(), "inputs": inputs}
        with atomic_file(self.record) as f:
            f.write(json.dumps(record, ensure_ascii=False, indent=2) + "\n")


def _differences(old: Any, new: Any, key: str = "") -> list[str]:
    """`key: old -> new` for each leaf that differs between two JSON trees (values cut to 60 characters)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in dict.fromkeys([*old, *new])
                for d in _differences(old.get(k), new.get(k), f"{key}.{k}" if key else k)]
    if old == new:
        return []
    before, after = (json.dumps(v, ensure_ascii=False)[:60] for v in (old, new))
    return [f"{key or 'inputs'}: {before} -> {after}"]
