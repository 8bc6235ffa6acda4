"""`clinical-rl serve-reward`: the configured reward class over HTTP, in OpenRLHF's remote reward protocol.

OpenRLHF (`--reward.remote_url http://HOST:PORT/get_reward`) POSTs `{"query": [...], "prompts": [...],
"labels": [...]}` where `query[i]` is the decoded prompt + response and `labels[i]` the dataset's `--data.label_key`
field; it reads `rewards` (advantages), `scores` (dynamic filtering) and `extra_logs` (per-sample metrics) back.

Labels are a reference string, or a JSON object (or JSON object string) with `Case` fields, which becomes
`RewardInput.case`. Scoring goes through `RewardActor` in this process, so `reward.timeout_s` / `reward.max_retries`
and per-sample isolation apply. A sample that still fails makes the whole request answer 503 with the failed
indices and reasons, unless `--failed-reward` asks for a stand-in value (then flagged in `reward_failed`).
"""

from __future__ import annotations

import json
import logging
import math
import queue
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from clinical_rl.config import RewardConfig
from clinical_rl.data.cases import Case
from clinical_rl.rewards.base import RewardInput, RewardResult

log = logging.getLogger(__name__)

# Decoded EOS/end-of-turn markers: OpenRLHF decodes prompt + response with skip_special_tokens=False, so a
# response ends with the tokenizer's EOS text, which would otherwise become part of the final answer.
DEFAULT_STRIP_SUFFIXES: tuple[str, ...] = (
    "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<|end|>", "<end_of_turn>", "<eos>", "</s>",
)


class LabelError(ValueError):
    """A label or case field is unusable; the message starts with the field path."""


class CaseFields(BaseModel):
    """The `Case` fields a label object (or verl's `extra_info`) may carry; unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", strict=True)

    answer: str = Field(min_length=1)
    question: str | None = None  # default: the prompt text
    id: str = ""
    options: dict[str, str] | None = None
    answer_letter: str | None = None
    icd10: str | None = None
    department: str | None = None
    language: Literal["zh", "en"] = "en"
    source: str = ""


def _path(loc: Sequence[str | int], prefix: str = "") -> str:
    """`("labels", 2, "options")` -> `labels[2].options`."""
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _pydantic_problems(err: ValidationError, prefix: str = "") -> list[str]:
    return [f"{_path(e['loc'], prefix) or '<root>'}: {e['msg']}" for e in err.errors()]


def case_from_fields(fields: Mapping[str, Any], prompt: str, where: str) -> Case:
    """A `Case` from label fields; errors name `where` (e.g. `labels[3]`) and the field."""
    fields = dict(fields)
    if isinstance(fields.get("options"), Mapping):  # parquet structs fill absent letters with None
        fields["options"] = {k: v for k, v in fields["options"].items() if v is not None}
    try:
        parsed = CaseFields.model_validate(fields)
    except ValidationError as err:
        raise LabelError("; ".join(_pydantic_problems(err, where))) from None
    values = parsed.model_dump()
    values["question"] = values["question"] if values["question"] is not None else prompt
    try:
        return Case(**values)
    except ValueError as err:
        raise LabelError(f"{where}: {err}") from None


def reward_input(prompt: str, response: str, label: str | Mapping[str, Any], where: str) -> RewardInput:
    """One `RewardInput` from a reference string, a JSON object string or a mapping of `Case` fields."""
    if isinstance(label, str) and label.lstrip().startswith("{"):
        try:
            label = json.loads(label)
        except json.JSONDecodeError as err:
            raise LabelError(f"{where}: starts with '{{' but is not valid JSON ({err.msg})") from None
        if not isinstance(label, dict):
            raise LabelError(f"{where}: JSON label must be an object")
    if isinstance(label, Mapping):
        case = case_from_fields(label, prompt, where)
        return RewardInput(prompt=prompt, response=response, reference=case.answer, case=case)
    if not isinstance(label, str):
        raise LabelError(f"{where}: must be a string or an object, got {type(label).__name__}")
    if not label.strip():
        raise LabelError(f"{where}: empty reference (pass the gold answer, e.g. OpenRLHF --data.label_key)")
    return RewardInput(prompt=prompt, response=response, reference=label)


def numeric_details(result: RewardResult) -> dict[str, float]:
    return {k: float(v) for k, v in result.details.items() if isinstance(v, int | float) and math.isfinite(v)}


def strip_suffixes(text: str, suffixes: Sequence[str]) -> str:
    """Drop trailing whitespace and any of `suffixes`, repeatedly (`...</s>\\n<|endoftext|>`)."""
    suffixes = [s for s in suffixes if s]
    while True:
        text = text.rstrip()
        hit = next((s for s in suffixes if text.endswith(s)), None)
        if hit is None:
            return text
        text = text[: -len(hit)]


class RewardRequest(BaseModel):
    """OpenRLHF's payload: `query[i]` = prompt + response text, `prompts[i]` its prompt, `labels[i]` the label."""

    model_config = ConfigDict(extra="ignore")

    query: list[str]
    prompts: list[str]
    labels: list[str | dict[str, Any]]

    @model_validator(mode="after")
    def _same_length(self) -> RewardRequest:
        n = len(self.query)
        for name in ("prompts", "labels"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} items but query has {n}")
        return self


class RewardService:
    """Turns a request into `RewardInput`s, scores them through `RewardActor`s, shapes the answer."""

    def __init__(
        self,
        cfg: RewardConfig,
        failed_reward: float | None = None,
        suffixes: Sequence[str] = DEFAULT_STRIP_SUFFIXES,
        concurrency: int = 1,
    ) -> None:
        from clinical_rl.actors.reward import RewardActor

        if failed_reward is not None and not math.isfinite(failed_reward):
            raise ValueError(f"--failed-reward must be finite, got {failed_reward}")
        if concurrency < 1:
            raise ValueError(f"--concurrency must be >= 1, got {concurrency}")
        self.cfg = cfg
        self.failed_reward = failed_reward
        self.suffixes = tuple(suffixes)
        # RewardActor keeps per-call state and the reward class may not be thread-safe: one request per instance.
        self._actors: queue.Queue = queue.Queue()
        for _ in range(concurrency):
            self._actors.put(RewardActor(cfg))
        self._known_keys: list[str] = []  # numeric detail keys seen so far: every answer carries all of them

    def inputs(self, req: RewardRequest) -> list[RewardInput]:
        items = []
        for i, (query, prompt, label) in enumerate(zip(req.query, req.prompts, req.labels, strict=True)):
            if not query.startswith(prompt):
                raise LabelError(f"query[{i}]: does not start with prompts[{i}] (cannot cut the response out)")
            response = strip_suffixes(query[len(prompt) :], self.suffixes)
            items.append(reward_input(prompt, response, label, f"labels[{i}]"))
        return items

    def score(self, items: list[RewardInput]) -> list[RewardResult]:
        if not items:
            return []
        actor = self._actors.get()
        try:
            return actor.score(items)
        finally:
            self._actors.put(actor)

    def answer(self, results: list[RewardResult]) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) for scored results."""
        failed = [(i, r) for i, r in enumerate(results) if r.status != "ok"]
        if failed and self.failed_reward is None:
            return 503, {
                "error": f"{len(failed)} of {len(results)} samples failed to score with {self.cfg.cls}",
                "failed": [{"index": i, "status": r.status, "reason": str(r.details.get("error", ""))}
                           for i, r in failed],
            }
        details = [numeric_details(r) for r in results]
        for d in details:
            self._known_keys.extend(k for k in d if k not in self._known_keys)
        rewards = [r.reward if r.status == "ok" else self.failed_reward for r in results]
        # Failed samples have no details of their own: 0.0 keeps every column as long as the batch.
        extra_logs = {k: [d.get(k, 0.0) for d in details] for k in self._known_keys}
        if self.failed_reward is not None:
            extra_logs["reward_failed"] = [0.0 if r.status == "ok" else 1.0 for r in results]
        return 200, {"rewards": rewards, "scores": list(rewards), "extra_logs": extra_logs}


def create_app(service: RewardService):
    """The FastAPI app: `POST /get_reward` (and `/`), `GET /health`."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    app = FastAPI(title="clinical_rl reward server", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        # Our own body (no `input` echo): names the fields, never repeats the payload.
        problems = [f"{_path([p for p in e['loc'] if p != 'body']) or '<body>'}: {e['msg']}" for e in err.errors()]
        log.warning("%s %s -> 422 invalid payload (%s)", request.method, request.url.path, "; ".join(problems)[:300])
        return JSONResponse({"error": "invalid payload", "problems": problems}, status_code=422)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "reward_cls": service.cfg.cls}

    def get_reward(req: RewardRequest) -> JSONResponse:
        start = time.perf_counter()
        n = len(req.query)
        try:
            items = service.inputs(req)
        except LabelError as err:
            log.warning("POST batch=%d -> 422 (%s)", n, err)
            return JSONResponse({"error": "invalid payload", "problems": [str(err)]}, status_code=422)
        status, body = service.answer(service.score(items))
        latency = time.perf_counter() - start
        if status != 200:
            for f in body["failed"]:
                log.error("sample %d: %s: %s", f["index"], f["status"], f["reason"][:500])
        n_failed = len(body["failed"]) if status != 200 else int(sum(body["extra_logs"].get("reward_failed", [])))
        log.info("POST batch=%d latency=%.3fs status=%d failed=%d", n, latency, status, n_failed)
        return JSONResponse(body, status_code=status)

    app.post("/get_reward")(get_reward)
    app.post("/")(get_reward)
    return app


def serve(
    cfg: RewardConfig,
    host: str = "127.0.0.1",
    port: int = 5000,
    failed_reward: float | None = None,
    suffixes: Sequence[str] = DEFAULT_STRIP_SUFFIXES,
    concurrency: int = 1,
) -> None:
    """Build the reward (fails before binding if `reward.cls` is unusable), then serve until SIGINT/SIGTERM."""
    import uvicorn

    service = RewardService(cfg, failed_reward=failed_reward, suffixes=suffixes, concurrency=concurrency)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding %s: the reward server has no authentication, anyone who can reach it can use it", host)
    mode = "503 on failed samples" if failed_reward is None else f"failed samples get {failed_reward}"
    log.info("serving %s on http://%s:%d/get_reward (%s)", cfg.cls, host, port, mode)
    # access_log off: our handler logs one line per request (batch size, latency), nothing of the payload.
    uvicorn.run(create_app(service), host=host, port=port, access_log=False, log_level="info")
