"""One preflight for every command: everything a run needs is checked before any actor starts, and every problem
is reported at once, each naming its config key.

    resume      the settings the latest checkpoint was trained with, unchanged (`ppo`)
    models      every model directory the command will load (model.path, critic.init_from, judge, eval, synthesis)
    data        every case file, loaded (not only found): data, synthesis, eval.benchmarks, the SFT rows
    reward      reward.cls imported and constructed once here with reward.kwargs; the audit pairs loaded
    outputs     select-rl-data: its output file writable, and not its own input
    tracking    W&B credentials when tracking.wandb_mode=online
    endpoints   every OpenAI-compatible endpoint answers one cheap request (GET /models), unless skipped

`clinical-rl plan` runs the same checks and says "ready" or lists what is wrong.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from clinical_rl.config import RunConfig
from clinical_rl.config_stages import EvalModelConfig

Command = Literal["ppo", "pipeline", "eval", "synth", "select-rl-data"]
PREFLIGHT_COMMANDS: tuple[Command, ...] = ("ppo", "pipeline", "eval", "synth", "select-rl-data")
ENDPOINT_TIMEOUT_S = 10.0
SKIP_HINT = "--skip-endpoint-check skips this check"


@dataclass(frozen=True)
class Problem:
    """One thing that would stop the run: the config key (or flag) it concerns and what is wrong."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class PreflightError(ValueError):
    """Everything the preflight found; the message lists one problem per line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        count, _, listed = format_problems(self.problems).partition(":")
        super().__init__(f"{count} found before starting anything:{listed}")


def format_problems(problems: Sequence[Problem]) -> str:
    """`N problems:` then one per line; a problem's own further lines are indented below it."""
    lines = [str(p).replace("\n", "\n      ") for p in problems]
    return f"{len(lines)} problem{'s' * (len(lines) != 1)}:\n  " + "\n  ".join(lines)


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible endpoint a command will call."""

    key: str  # the config key that names it
    base_url: str | None  # None: api.openai.com
    api_key_env: str
    model: str = ""  # the model name the run will ask for ("": not checked)


def check(cfg: RunConfig, command: Command, *, models: Sequence[EvalModelConfig] | None = None,
          endpoints: bool = True, flags: Collection[str] = ()) -> None:
    """Run the preflight of `command`; `models` are the models `eval` compares (default `cfg.eval.models`);
    `flags`: which of `eval`'s `--model` / `--benchmark` replaced the config's lists, so problems name the flag.

    Raises:
        PreflightError: one or more problems, all listed.
    """
    problems = find_problems(cfg, command, models=models, endpoints=endpoints, flags=flags)
    if problems:
        raise PreflightError(problems)


def check_reward(cfg: RunConfig, *, endpoints: bool = True) -> None:
    """The reward section alone (`serve-reward`, `verifier-audit`): its class constructed with its kwargs, its
    judge's endpoint reached.

    Raises:
        PreflightError: one or more problems, all listed.
    """
    checks = _Checks(cfg)
    checks.reward()
    if endpoints:
        checks.reach_endpoints()
    if checks.problems:
        raise PreflightError(checks.problems)


def find_problems(cfg: RunConfig, command: Command, *, models: Sequence[EvalModelConfig] | None = None,
                  endpoints: bool = True, flags: Collection[str] = ()) -> list[Problem]:
    """Every problem `command` would meet with `cfg`, in the order it would meet them; empty: ready to start."""
    checks = _Checks(cfg, flags)
    if command == "ppo":
        checks.resume()
        checks.rl(model_key="model.path")
        if cfg.eval.after_training:
            checks.evaluation(cfg.eval.models)
    elif command == "synth":
        checks.synthesis()
    elif command == "eval":
        checks.evaluation(cfg.eval.models if models is None else models, require_models=True)
    elif command == "select-rl-data":
        checks.selection()
    else:
        checks.pipeline()
    if command != "select-rl-data":  # the one command that logs nothing to W&B
        checks.tracking()
    if endpoints:
        checks.reach_endpoints()
    return checks.problems


class _Checks:
    """Collects problems instead of stopping at the first; also the endpoints the run will call."""

    def __init__(self, cfg: RunConfig, flags: Collection[str] = ()) -> None:
        self.cfg, self.flags = cfg, frozenset(flags)
        self.problems: list[Problem] = []
        self.endpoints: list[Endpoint] = []

    def attempt(self, key: str, check: Callable[[], Any]) -> None:
        from pydantic import ValidationError

        try:
            check()
        except _Keyed as err:  # raised under another key than the check's own
            self.problems.append(Problem(err.key, _without_key(str(err.error), err.key)))
        except ValidationError as err:  # a config model of the checked object: one problem per field, keyed
            for e in err.errors():
                where = ".".join([key, *map(str, e["loc"])])
                self.problems.append(Problem(where, "unknown key" if e["type"] == "extra_forbidden" else e["msg"]))
        except (ValueError, FileNotFoundError, OSError, ImportError, TypeError) as err:
            self.problems.append(Problem(key, _without_key(str(err), key)))

    def reach_endpoints(self) -> None:
        for endpoint in self.endpoints:
            self.attempt(endpoint.key, lambda e=endpoint: reach(e))

    def model(self, path: str, key: str) -> None:
        from clinical_rl.models import check_model_dir

        self.attempt(key, lambda: check_model_dir(path, key))

    def cases(self, key: str, section: Any, limit: int | None) -> None:
        self.attempt(key, lambda: self._load(key, section, limit))

    def _load(self, key: str, section: Any, limit: int | None) -> list:
        """The cases of a data-like section (data, synthesis, a benchmark); errors are keyed by `cases`' caller."""
        from clinical_rl.data.loaders import load_cases
        from clinical_rl.data.rl_data import load_rl_cases

        try:
            chain = section.chain_data() if getattr(section, "env", None) is not None else None  # chain benchmark
            if chain is not None or (self.cfg.env is not None and section is self.cfg.data):  # or a chain run's
                return load_rl_cases(chain or section, self.cfg.seed, chain=True)
            return load_cases(section.path, section.format, section.fields or None, section.language, limit,
                              self.cfg.seed, departments=section.departments,
                              builtin_per_disease=section.builtin_per_disease)
        except (ValueError, OSError) as err:
            raise _Keyed(key, err) from None

    def resume(self) -> None:
        """A resume must keep the settings the latest checkpoint was trained with (`rl/config_record.py`); the
        pipeline needs no such check: it moves a PPO stage whose settings changed aside and starts it anew."""
        from clinical_rl.rl.checkpoint import latest_checkpoint
        from clinical_rl.rl.config_record import check_resume

        if self.cfg.resume and not self.cfg.resume_accept_changes:
            self.attempt("resume", lambda: check_resume(self.cfg, latest_checkpoint(self.cfg.output_dir)))

    def rl(self, model_key: str | None) -> None:
        cfg = self.cfg
        if model_key is not None:
            self.model(cfg.model.path, model_key)
        if cfg.algo.use_critic and cfg.critic.init_from:
            self.model(cfg.critic.init_from, "critic.init_from")
        self.reward()
        self.cases("data.path", cfg.data, cfg.data.limit)

    def reward(self) -> None:
        from clinical_rl.rewards.base import load_reward_class

        r = self.cfg.reward
        self.attempt("reward.cls", lambda: load_reward_class(r.cls))
        if not any(p.key == "reward.cls" for p in self.problems):
            # Constructed once here so that a typo in the kwargs fails now, not after every actor has started.
            self.attempt("reward.kwargs", lambda: load_reward_class(r.cls)(**r.kwargs))
        judge = r.kwargs.get("judge")
        if isinstance(judge, dict) and judge.get("backend", "openai") == "openai":
            self._endpoint("reward.kwargs.judge", judge)
        if r.judge_engine is not None:
            self.model(r.judge_engine.model, "reward.judge_engine.model")
        if r.audit is not None:
            from clinical_rl.rewards.audit import load_pairs

            self.attempt("reward.audit.pairs", lambda: load_pairs(r.audit.pairs))

    def selection(self) -> None:
        """`select-rl-data`: the answering model, the reward (scored in the driver: no in-cluster judge), the
        data, and an output file it may write (a flag that set a value names the problem)."""
        from clinical_rl.selection.runner import selection_model, selection_output

        cfg = self.cfg
        model, key = selection_model(cfg)
        self.model(model, "--model" if "--model" in self.flags else key)
        self.reward()
        judge = cfg.reward.kwargs.get("judge")
        if cfg.reward.judge_engine is not None or (isinstance(judge, dict) and judge.get("backend") == "ray_engine"):
            self.problems.append(Problem(
                "reward.judge_engine" if cfg.reward.judge_engine is not None else "reward.kwargs.judge.backend",
                "select-rl-data scores in its own process and starts no in-cluster judge engine: give the reward an "
                "endpoint judge (reward.kwargs.judge.backend=openai) or none"))
        self.cases("data.path", cfg.data, cfg.data.limit)
        output = selection_output(cfg)
        self.attempt("--out" if "--out" in self.flags else "select.output", lambda: _writable(output, cfg.data.path))

    def evaluation(self, models: Sequence[EvalModelConfig], require_models: bool = False) -> None:
        ev = self.cfg.eval
        if require_models and not models:
            self.problems.append(Problem("eval.models", "empty: name at least one model (eval.models: [{label: NAME, "
                                         "path: DIR}], or --model PATH on `clinical-rl eval`)"))
        model_key = "--model" if "--model" in self.flags else "eval.models"
        benchmark_key = "--benchmark" if "--benchmark" in self.flags else "eval.benchmarks"
        self._unique(model_key, "label", [m.label for m in models])
        self._unique(benchmark_key, "name", [b.name for b in ev.benchmarks])
        for m in models:
            flag = "--model" in self.flags
            key = f"--model {m.label}" if flag else f"eval.models[{m.label}]"
            if m.path is not None:
                self.model(m.path, key if flag else f"{key}.path")
            else:
                self.endpoints.append(Endpoint(key if flag else f"{key}.base_url", m.base_url, m.api_key_env,
                                               m.model or ""))
        for b in ev.benchmarks:
            flag = "--benchmark" in self.flags
            self.cases(f"--benchmark {b.name}" if flag else f"eval.benchmarks[{b.name}].path", b, None)
        if ev.judge is not None:
            self._judge("eval.judge", ev.judge)

    def _unique(self, key: str, what: str, names: Sequence[str]) -> None:
        """Results are stored and reported by label / name: two of the same would be merged into one row."""
        for name in dict.fromkeys(n for n in names if names.count(n) > 1):
            self.problems.append(Problem(key, f"the {what} {name!r} is given {names.count(name)} times; each needs "
                                         f"its own {what} (--model LABEL=PATH, --benchmark NAME=PATH)"))
        for name in (n for n in names if not n.strip()):
            self.problems.append(Problem(key, f"an empty {what}"))

    def synthesis(self) -> None:
        s = self.cfg.synthesis
        if s.teacher == "knowledge_base":
            self.attempt("synthesis.teacher", lambda: _kb_covers(self._load("synthesis.path", s, s.limit)))
            return
        self.cases("synthesis.path", s, s.limit)
        if s.engine_model is not None:
            self.model(s.engine_model, "synthesis.engine_model")
        elif not s.model:
            self.problems.append(Problem("synthesis.model", "required for an endpoint (or set synthesis.engine_model "
                                         "to a local model, or synthesis.teacher=knowledge_base)"))
        else:
            self.endpoints.append(Endpoint("synthesis.base_url", s.base_url, s.api_key_env, s.model))
        if s.judge is not None:
            self._judge("synthesis.judge", s.judge)

    def pipeline(self) -> None:
        stages, cfg = self.cfg.pipeline.stages, self.cfg
        self.model(cfg.model.path, "model.path")  # the base every stage starts from
        if "synth" in stages:
            self.synthesis()
        if "sft" in stages:
            self._sft_rows(stages)
        if "ppo" in stages:
            self.rl(model_key=None)
        if "eval" in stages:  # the pipeline evaluates its own models beside eval.models, under these labels
            for m in (m for m in cfg.eval.models if m.label in ("base", "sft", "sft+rl", "rl")):
                self.problems.append(Problem(f"eval.models[{m.label}]", "this label names one of the pipeline's own "
                                             "models (base, sft, sft+rl, rl): choose another"))
            self.evaluation(cfg.eval.models)

    def _sft_rows(self, stages: Sequence[str]) -> None:
        from clinical_rl.sft.dataset import load_rows

        if self.cfg.sft.data_path:
            self.attempt("sft.data_path", lambda: load_rows(self.cfg.sft.data_path))
        elif "synth" not in stages:
            from clinical_rl.synthesis.runner import synthesis_output

            rows = synthesis_output(self.cfg)
            self.attempt("sft.data_path", lambda: load_rows(rows) if rows.is_file() else _no_rows(rows))

    def _judge(self, key: str, spec: dict[str, Any]) -> None:
        from clinical_rl.rewards.clinical import JudgeConfig

        judge = None

        def validate() -> None:
            nonlocal judge
            judge = JudgeConfig.model_validate(spec)

        self.attempt(key, validate)
        if judge is None:
            return
        if judge.backend == "openai":
            if not judge.model:
                self.problems.append(Problem(f"{key}.model", "required for backend openai"))
            self._endpoint(key, spec)

    def _endpoint(self, key: str, spec: dict[str, Any]) -> None:
        self.endpoints.append(Endpoint(f"{key}.base_url", spec.get("base_url"),
                                       spec.get("api_key_env", "OPENAI_API_KEY"), str(spec.get("model") or "")))

    def tracking(self) -> None:
        from clinical_rl.tracking import require_wandb_login

        self.attempt("tracking.wandb_mode", lambda: require_wandb_login(self.cfg.tracking))


class _Keyed(Exception):
    """An error found while checking one key that belongs to another (the data a teacher check had to load)."""

    def __init__(self, key: str, error: Exception) -> None:
        super().__init__(key, error)
        self.key, self.error = key, error


def _kb_covers(cases: list) -> None:
    """Raises ValueError when the knowledge-base teacher can write a row for none of `cases`."""
    from clinical_rl.synthesis.kb_teacher import kb_coverage

    taught, untaught = kb_coverage(cases)
    if not taught:
        raise ValueError(f"knowledge_base writes rows only for the built-in diseases, and has none of the "
                         f"{len(cases)} cases of synthesis.path ({'; '.join(untaught)}); use synthesis.teacher=search "
                         "with a synthesizer (synthesis.model or synthesis.engine_model)")


def _writable(output: Path, source: str) -> None:
    """Raises ValueError when `output` is a directory, is the data file `source` it is selected from, or lies under
    no directory this process may write (the nearest existing ancestor counts: missing ones are created)."""
    if output.is_dir():
        raise ValueError(f"{output} is a directory; name the JSONL file to write")
    if source != "builtin" and Path(source).exists() and output.resolve() == Path(source).resolve():
        raise ValueError(f"{output} is data.path: the selection would overwrite the cases it selects from")
    parent = next(p for p in output.absolute().parents if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {output}: {parent} is not a writable directory")


def _no_rows(path: Path) -> None:
    raise FileNotFoundError(f"no SFT rows: {path} does not exist and the pipeline's stages do not include synth "
                            "(set sft.data_path, or add synth to pipeline.stages)")


def _without_key(message: str, key: str) -> str:
    """Errors raised deeper name a key of their own ("data.path: ..."): the problem's key replaces it."""
    head, sep, rest = message.partition(": ")
    return rest if sep and (head == key or head in ("data.path", "reward.cls")) else message


def reach(endpoint: Endpoint) -> None:
    """One cheap request (GET <base_url>/models, `ENDPOINT_TIMEOUT_S`) with the key the run will send.

    Raises:
        ConnectionError: the endpoint does not answer, or answers that the key is missing or wrong; the message
            names the URL and the key's environment variable, never the key.
    """
    import httpx

    base = (endpoint.base_url or "https://api.openai.com/v1").rstrip("/")
    key = os.environ.get(endpoint.api_key_env)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.get(f"{base}/models", headers=headers, timeout=ENDPOINT_TIMEOUT_S)
    except httpx.HTTPError as err:
        raise ConnectionError(f"{base} does not answer ({type(err).__name__}: {err}); {SKIP_HINT}") from None
    if response.status_code in (401, 403):
        why = f"rejects the key in {endpoint.api_key_env}" if key else f"needs a key: {endpoint.api_key_env} is not set"
        raise ConnectionError(f"{base} {why} (HTTP {response.status_code}); {SKIP_HINT}")
    if response.status_code >= 500:
        raise ConnectionError(f"{base} answers HTTP {response.status_code}; {SKIP_HINT}")
    served = _served_models(response)
    if endpoint.model and served is not None and endpoint.model not in served:
        raise ConnectionError(f"{base} does not serve {endpoint.model!r} (it serves: {', '.join(served[:8]) or 'none'}"
                              f"{', ...' if len(served) > 8 else ''}); {SKIP_HINT}")


def _served_models(response: Any) -> list[str] | None:
    """The model ids of an OpenAI-style `/models` answer; None when the answer is not one (not every server
    lists its models, so then nothing is concluded)."""
    try:
        data = response.json()["data"]
        return [str(m["id"]) for m in data]
    except (ValueError, KeyError, TypeError):
        return None
