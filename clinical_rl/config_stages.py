"""Config sections of the stages around RL: the training data, synthesis, evaluation and the pipeline."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from clinical_rl.config_base import ConfigNode, EngineConfig
from clinical_rl.data.departments import Department
from clinical_rl.data.fields import CaseFields
from clinical_rl.envs.diagnostic_chain import DiagnosticChainConfig
from clinical_rl.synthesis.filters import FilterConfig


DataFormat = Literal[
    "auto", "builtin", "huatuo_o1", "huatuo_o1_mcq", "medqa", "cmb_clin", "medrbench",
    "jsonl", "json", "csv", "parquet", "hf",
]


DEPARTMENTS_HELP = "keep only the cases of these departments (built-in data: only their diseases); null: all"
PER_DISEASE_HELP = "built-in data: generated vignettes per disease and language"
# What a chain benchmark's path may hold (`data.rl_data.load_rl_cases` with chain=True): the knowledge base's
# chain cases, MedR-Bench (by format or its shared file name), or chain-case JSONL.
CHAIN_FORMATS: tuple[str, ...] = ("auto", "builtin", "medrbench", "jsonl")


FIELDS_HELP = ("schema field -> source column, null (not read), {column, join, values} (renamed column, list joined, "
               "values replaced) or {template: '{col} ...', join, values} (text from columns); generic formats only; "
               "see data/fields.py")


def _check_fields_format(fields: dict[str, Any], fmt: str, where: str) -> None:
    """Raises ValueError when `fields` is given for a named format (their columns are fixed)."""
    from clinical_rl.data.loaders import GENERIC_FORMATS

    if fields and fmt not in (*GENERIC_FORMATS, "auto"):
        raise ValueError(f"{where}.fields applies only to the formats {', '.join(GENERIC_FORMATS)}")


class DataConfig(ConfigNode):
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


class EvalModelConfig(ConfigNode):
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


class EvalBenchmarkConfig(ConfigNode):
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
    env: DiagnosticChainConfig | None = Field(
        None, description="a chain benchmark: each case is an episode of this environment (the model orders "
        "examinations, then diagnoses; path holds chain cases, as data.path of a chain run); null: one-turn answers")

    @model_validator(mode="after")
    def _check(self) -> EvalBenchmarkConfig:
        where = f"eval.benchmarks[{self.name}]"
        _check_fields_format(self.fields, self.format, where)
        if self.env is not None:
            # Chain cases have one layout (envs/chain_cases.py) and three sources; no column mapping applies.
            if self.fields:
                raise ValueError(f"{where}.fields: a chain benchmark (env) reads chain cases, whose layout is fixed; "
                                 "remove the mapping")
            if self.format not in CHAIN_FORMATS:
                raise ValueError(f"{where}.format: a chain benchmark (env) reads {', '.join(CHAIN_FORMATS)}, "
                                 f"not {self.format!r}")
        return self

    def chain_data(self) -> DataConfig:
        """The data section `load_rl_cases(..., chain=True)` loads this chain benchmark's cases from (no limit:
        the benchmark's applies after its split)."""
        return DataConfig(path=self.path, format=self.format, language=self.language, departments=self.departments,
                          builtin_per_disease=self.builtin_per_disease)


class EvalConfig(ConfigNode):
    models: list[EvalModelConfig] = Field(default_factory=list, description="models to compare; empty: the run's")
    benchmarks: list[EvalBenchmarkConfig] = Field(
        default_factory=lambda: [EvalBenchmarkConfig(name="builtin")], description="case sets to evaluate on")
    max_new_tokens: int = Field(1024, ge=1, description="response cap (chain benchmarks: per reply)")
    temperature: float = Field(0.0, ge=0, description="0: greedy")
    cot_prompt: bool = Field(False, description="base models: ask for step-by-step reasoning in the user turn")
    system_prompt: str | None = Field(None, description="override the think-then-answer instruction")
    answer_format: Literal["think", "huatuo", "auto"] = Field("auto", description="how final answers are parsed")
    judge: dict[str, Any] | None = Field(None, description="LLM judge for undecided answers (reward judge keys)")
    engine: EngineConfig = Field(default_factory=lambda: EngineConfig(dtype="bfloat16", max_model_len=4096),
                                 description="vLLM engine actors of each local model")
    max_in_flight: int = Field(8, ge=1, description="concurrent requests to an endpoint")
    timeout_s: float = Field(600.0, gt=0, description="per-request timeout (endpoint) / per-batch (engines)")
    bootstrap_resamples: int = Field(2000, ge=100, description="bootstrap resamples of the 95% CIs")
    max_consecutive_errors: int = Field(8, ge=1, description="stop sending a model's requests after this many failed "
                                        "in a row (a dead endpoint); the rest count as errors")
    max_error_frac: float = Field(0.05, ge=0, le=1, description="`eval` exits non-zero when a model's errors on a "
                                  "benchmark pass this fraction (the report is still written)")
    out_dir: str | None = Field(None, description="report directory; default: <output_dir>/eval")
    restart: bool = Field(False, description="evaluate every (model, benchmark) pair again (default: reuse the "
                          "predictions in <out_dir>/predictions/ of pairs done with the same inputs, and ask again "
                          "only the cases that failed)")
    min_interval_n: int = Field(10, ge=1, description="groups of fewer cases show accuracy and n without a "
                                "confidence interval (report, charts, summary.json)")
    after_training: bool = Field(False, description="`ppo`: evaluate the base model and the trained policy at the end")


class SynthesisFilterConfig(ConfigNode):
    """Quality filters on synthesized rows (synthesis/filters.py); a row that fails is stored as `filtered`."""

    max_repetition: float = Field(FilterConfig.max_repetition, ge=0, le=1,
                                  description="share of repeated 4-grams above which a text loops")
    min_thinking_chars: int = Field(FilterConfig.min_thinking_chars, ge=0, description="shortest thinking kept")
    max_thinking_chars: int = Field(FilterConfig.max_thinking_chars, ge=1, description="longest thinking kept")
    min_response_chars: int = Field(FilterConfig.min_response_chars, ge=0, description="shortest response kept")
    max_response_chars: int = Field(FilterConfig.max_response_chars, ge=1, description="longest response kept")

    def to_filter_config(self) -> FilterConfig:
        return FilterConfig(**self.model_dump())


class SynthesisConfig(ConfigNode):
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
    engine_model: str | None = Field(None, description="a local HF directory or 'embedded': synthesize with vLLM "
                                     "engine actors of this model instead of the endpoint")
    engine: EngineConfig = Field(default_factory=lambda: EngineConfig(dtype="bfloat16", max_model_len=4096),
                                 description="the engine actors of engine_model")
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


class SelectConfig(ConfigNode):
    """`clinical-rl select-rl-data`: WiNGPT-3.0's offline difficulty selection. Each case of `data` is answered
    `n_samples` times by `model` (the SFT checkpoint) as the RL loop samples it (rollout engines, temperature, top_p,
    max_new_tokens); the cases whose pass rate lies in [min_pass_rate, max_pass_rate] are written to `output`."""

    model: str | None = Field(None, description="the model that answers (the SFT checkpoint): a local HF directory or "
                              "'embedded'; null: model.path")
    n_samples: int = Field(8, ge=1, description="answers sampled per case; a pass rate is a multiple of 1/n_samples")
    min_pass_rate: float = Field(0.1, ge=0, le=1, description="lowest pass rate kept (below: too hard)")
    max_pass_rate: float = Field(0.9, ge=0, le=1, description="highest pass rate kept (above: too easy); the default "
                                 "band keeps what the model sometimes but not always solves")
    pass_threshold: float = Field(1.0, description="a reward class that does not report details['correct']: a "
                                  "sample passes when its reward >= this (with `correct`: when it is 1)")
    output: str | None = Field(None, description="the selected cases, JSONL with pass_rate per case, for the PPO "
                               "stage's data.path; default: <output_dir>/rl_data.jsonl (summary beside it)")

    @model_validator(mode="after")
    def _check(self) -> SelectConfig:
        from clinical_rl.selection.pass_rates import check_band

        check_band(self.min_pass_rate, self.max_pass_rate, "select.min_pass_rate, select.max_pass_rate")
        return self


PipelineStage = Literal["synth", "sft", "ppo", "eval"]


class PipelineConfig(ConfigNode):
    stages: list[PipelineStage] = Field(["synth", "sft", "ppo", "eval"],
                                        description="`pipeline` stages to run, in order")

