"""`clinical-rl serve-reward`: the configured reward class over HTTP, in OpenRLHF's remote reward protocol.

OpenRLHF (`--reward.remote_url http://HOST:PORT/get_reward`) POSTs `{"query": [...], "prompts": [...],
"labels": [...]}` where `query[i]` is the decoded prompt + response and `labels[i]` the dataset's `--data.label_key`
field; it reads `rewards` (advantages), `scores` (dynamic filtering) and `extra_logs` (per-sample metrics) back.

Labels are a reference string, or a JSON object (or JSON object string) with `Case` fields, which becomes
`RewardInput.case`. Scoring goes through `RewardActor` in this process, so `reward.timeout_s` / `reward.max_retries`
and per-sample isolation apply. A sample that still fails makes the whole request answer 503 with the failed
indices and reasons, unless `--failed-reward` asks for a stand-in value (then flagged in `reward_failed`).
Whether the policy's chat template opened `<think>` (R1-distill, Qwen3-thinking) is read off `prompts[i]`, which
OpenRLHF sends as rendered: a prompt ending in `<think>` makes the response start inside the reasoning block.

Limits (`server_limits.py`), each a flag: `--max-body-bytes` (default 4 MiB) caps the request body and is answered
413 before the body is parsed (by `Content-Length`, and by counting the bytes of a chunked body as they arrive);
a body must be UTF-8 (400 otherwise); `--max-items` (default 1024) caps the samples per request and
`--max-field-chars` (default 65536) each `query[i]`, `prompts[i]`, `labels[i]` text and each string in a label
object, answered 413 with every breach named (`query[3]: 70000 characters exceed --max-field-chars 65536`). Every
rejected request (4xx) is logged on one line with its method, path, client, status and reason; never the texts.
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
from clinical_rl.rewards.answer_format import prompt_opens_think
from clinical_rl.rewards.base import RewardInput, RewardResult
from clinical_rl.rewards.server_limits import (
    BodyLimitMiddleware,
    LimitExceeded,
    ServerLimits,
    client_of,
    field_problems,
    log_rejection,
)

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


def reward_input(prompt: str, response: str, label: str | Mapping[str, Any], where: str,
                 think_opened: bool | None = None) -> RewardInput:
    """One `RewardInput` from a reference string, a JSON object string or a mapping of `Case` fields.

    `think_opened` None: read off the prompt text. There is no tokenizer here, but OpenRLHF sends the prompt as
    rendered by the policy's chat template, so a prompt ending in `<think>` means the template opened the block.
    """
    opened = prompt_opens_think(prompt) if think_opened is None else think_opened
    if isinstance(label, str) and label.lstrip().startswith("{"):
        try:
            label = json.loads(label)
        except json.JSONDecodeError as err:
            raise LabelError(f"{where}: starts with '{{' but is not valid JSON ({err.msg})") from None
        if not isinstance(label, dict):
            raise LabelError(f"{where}: JSON label must be an object")
    if isinstance(label, Mapping):
        case = case_from_fields(label, prompt, where)
        return RewardInput(prompt=prompt, response=response, reference=case.answer, case=case, think_opened=opened)
    if not isinstance(label, str):
        raise LabelError(f"{where}: must be a string or an object, got {type(label).__name__}")
    if not label.strip():
        raise LabelError(f"{where}: empty reference (pass the gold answer, e.g. OpenRLHF --data.label_key)")
    return RewardInput(prompt=prompt, response=response, reference=label, think_opened=opened)


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
        from clinical_rl.rewards.guard import RewardActor

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


def _body_problem(error: Mapping[str, Any]) -> str:
    """One FastAPI body error as `field path: message`; invalid JSON names its character offset."""
    if error["type"] == "json_invalid":
        return f"<body>: invalid JSON at character {error['loc'][-1]} ({error.get('ctx', {}).get('error', '')})"
    return f"{_path([p for p in error['loc'] if p != 'body']) or '<body>'}: {error['msg']}"


def create_app(service: RewardService, limits: ServerLimits = ServerLimits()):
    """The FastAPI app: `POST /get_reward` (and `/`), `GET /health`, behind the body cap of `limits`."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    app = FastAPI(title="clinical_rl reward server", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_body_bytes)

    def reject(request: Request, status: int, error: str, problems: list[str],
               headers: Mapping[str, str] | None = None) -> JSONResponse:
        log_rejection(request.method, request.url.path, client_of(request.scope), status,
                      f"{error}: {'; '.join(problems)}" if problems else error)
        return JSONResponse({"error": error, "problems": problems}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        # Our own body (no `input` echo): names the fields, never repeats the payload.
        problems = [_body_problem(e) for e in err.errors()]
        return reject(request, 422, "invalid payload", problems)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
        # unknown route, wrong method (its Allow header kept), a body FastAPI cannot read
        return reject(request, err.status_code, str(err.detail), [], err.headers)

    @app.exception_handler(LimitExceeded)
    async def _too_large(request: Request, err: LimitExceeded) -> JSONResponse:
        return reject(request, 413, "request too large", err.problems)

    @app.exception_handler(LabelError)
    async def _bad_label(request: Request, err: LabelError) -> JSONResponse:
        return reject(request, 422, "invalid payload", [str(err)])

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "reward_cls": service.cfg.cls}

    def get_reward(req: RewardRequest) -> JSONResponse:
        """Raises `LimitExceeded` (413) or `LabelError` (422); their handlers log and answer."""
        start = time.perf_counter()
        n = len(req.query)
        too_large = field_problems(req.query, req.prompts, req.labels, limits)
        if too_large:
            raise LimitExceeded(too_large)
        items = service.inputs(req)
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
    limits: ServerLimits = ServerLimits(),
) -> None:
    """Build the reward, then serve until SIGINT/SIGTERM.

    Raises:
        ValueError: before anything binds, when `reward.cls` or its kwargs are unusable, or `failed_reward` is not
            finite, or `concurrency` is below 1.
    """
    import uvicorn

    service = RewardService(cfg, failed_reward=failed_reward, suffixes=suffixes, concurrency=concurrency)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding %s: the reward server has no authentication, anyone who can reach it can use it", host)
    mode = "503 on failed samples" if failed_reward is None else f"failed samples get {failed_reward}"
    log.info("serving %s on http://%s:%d/get_reward (%s; limits: body %d bytes, %d items, %d chars per field)",
             cfg.cls, host, port, mode, limits.max_body_bytes, limits.max_items, limits.max_field_chars)
    # access_log off: our handler logs one line per request (batch size, latency), nothing of the payload.
    uvicorn.run(create_app(service, limits), host=host, port=port, access_log=False, log_level="info")
