"""Synthesis concurrency: items/s of `run_synthesis` with 16 cases in flight relative to one case at a time.

Why: each case is a chain of blocking LLM calls, so a sequential run leaves the server idle between tokens of a
single sequence; with many cases in flight the server batches their decoding. Target: >= 8x where the server
batches (a GPU `vllm serve`, or a hosted API, whose per-request latency hardly grows with the batch). A 2-core CPU
server batches decoding only partly (each step's matmuls already use both cores, so a step of 16 sequences is
several times slower than a step of one), so expect far less here.
Both sides synthesize the same N built-in cases against one server (started here, or `--base-url`), with greedy
sampling so that they make the same calls; each side writes a fresh store. With `--rounds` > 1 the order is
flipped every round and the medians are compared.
Run: `python bench/synthesis_concurrency.py [--cases 16] [--in-flight 16] [--max-tokens 96] [--rounds 1]`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ratio import report_ratio  # bench/ is sys.path[0] when a script runs

from clinical_rl.data.loaders import load_cases
from clinical_rl.llm_client import OpenAIChat
from clinical_rl.rewards.cascade import CascadeVerifier
from clinical_rl.rewards.rule_verifier import RuleVerifier
from clinical_rl.synthesis.filters import FilterConfig
from clinical_rl.synthesis.runner import run_synthesis, searcher
from clinical_rl.synthesis.search import SearchConfig, cascade_verify
from clinical_rl.synthesis.store import SynthesisStore


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", default=None, help="OpenAI-compatible server (default: start `vllm serve` here)")
    p.add_argument("--model", default=None, help="served model name with --base-url; else the HF dir to serve")
    p.add_argument("--cases", type=int, default=16)
    p.add_argument("--in-flight", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=96, help="per LLM call")
    p.add_argument("--max-depth", type=int, default=1)
    p.add_argument("--max-attempts", type=int, default=1)
    p.add_argument("--rounds", type=int, default=1)
    return p.parse_args()


@contextlib.contextmanager
def server(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    """(base_url, served model name): the given endpoint, or a local `vllm serve` for the bench's lifetime."""
    if args.base_url:
        yield args.base_url, args.model or "local"
        return
    from clinical_rl.local_server import LocalVLLMServer
    from clinical_rl.models import resolve_model_path

    log = Path(tempfile.gettempdir()) / "synthesis_concurrency_server.log"
    with LocalVLLMServer(args.model or resolve_model_path("embedded"), served_name="local", log_path=log) as srv:
        yield srv.base_url, "local"


def timed_run(base_url: str, model: str, in_flight: int, args: argparse.Namespace) -> tuple[float, int]:
    """(items/s, LLM calls) of one synthesis of the bench's cases with `in_flight` cases at once."""
    cases = load_cases("builtin")[: args.cases]
    backend = OpenAIChat(model, base_url, timeout_s=600, max_retries=0, max_in_flight=in_flight)
    search = SearchConfig(args.max_depth, args.max_attempts, args.max_tokens, temperature=0.0)
    verify = cascade_verify(CascadeVerifier(RuleVerifier()))
    with tempfile.TemporaryDirectory() as tmp, SynthesisStore(Path(tmp) / "out.jsonl") as store:
        summary = run_synthesis(cases, searcher(backend, verify, search, synthesizer=model), store,
                                filter_cfg=FilterConfig(), max_in_flight=in_flight)
        calls = sum(json.loads(line)["lineage"]["calls"] for line in store.path.read_text().splitlines())
    if summary.errors or summary.finished != len(cases):
        raise RuntimeError(f"{in_flight} in flight: {summary}")
    return summary.items_per_s, calls


def main() -> None:
    args = parse_args()
    parallel, sequential = f"synthesis_{args.in_flight}_in_flight", "sequential"
    rates: dict[str, list[float]] = {parallel: [], sequential: []}
    with server(args) as (base_url, model):
        OpenAIChat(model, base_url).chat([[{"role": "user", "content": "Hi"}]], max_tokens=4)  # warm-up
        for r in range(args.rounds):
            order = [(parallel, args.in_flight), (sequential, 1)]
            for label, in_flight in order if r % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                items_per_s, calls = timed_run(base_url, model, in_flight, args)
                rates[label].append(items_per_s * 60)
                print(f"round {r} {label:24s} {items_per_s:.3f} items/s ({args.cases} cases, {calls} LLM calls, "
                      f"{time.perf_counter() - start:.0f} s)", flush=True)
    report_ratio(rates, parallel, sequential, f"{parallel}/{sequential}", "items/min")


if __name__ == "__main__":
    main()
