"""Session fixtures: a tiny model on a task-sized tokenizer, warmed up on the candidate-diagnosis task."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local test clusters only
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="session")
def task_model(tmp_path_factory) -> Path:
    """Tiny Llama that answers `<think>the finding is X</think>\\nDiagnosis: <random candidate>`."""
    from clinical_rl.models import build_tiny_model, train_tiny_tokenizer
    from tests.candidate_task import tokenizer_corpus, warm_start

    root = tmp_path_factory.mktemp("task_model")
    model_dir = build_tiny_model(root / "model", train_tiny_tokenizer(tokenizer_corpus(), root / "tokenizer"))
    warm_start(model_dir)
    return model_dir


@pytest.fixture(scope="session")
def task_cases(tmp_path_factory) -> Path:
    from tests.candidate_task import write_cases

    return write_cases(tmp_path_factory.mktemp("task_cases") / "cases.jsonl", n=256, seed=7)


@pytest.fixture(scope="session")
def chain_model(tmp_path_factory) -> Path:
    """Tiny Llama that, given a chain-task case, half the time orders the chest X-ray and answers from its result,
    half the time guesses at once (tests/chain_task.py)."""
    from clinical_rl.models import build_tiny_model, train_tiny_tokenizer
    from tests.chain_task import chain_corpus, warm_start_chain

    root = tmp_path_factory.mktemp("chain_model")
    model_dir = build_tiny_model(root / "model", train_tiny_tokenizer(chain_corpus(), root / "tokenizer"))
    warm_start_chain(model_dir)
    return model_dir


@pytest.fixture(scope="session")
def chain_cases(tmp_path_factory) -> Path:
    from tests.chain_task import write_chain_task

    return write_chain_task(tmp_path_factory.mktemp("chain_cases") / "chains.jsonl", n=256, seed=7)


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory):
    """A real `vllm serve` (OpenAI-compatible) of the embedded model on 127.0.0.1, shared by the session."""
    from clinical_rl.local_server import LocalVLLMServer
    from clinical_rl.models import resolve_model_path

    log = tmp_path_factory.mktemp("vllm_server") / "server.log"
    with LocalVLLMServer(resolve_model_path("embedded"), served_name="smollm2", log_path=log) as server:
        yield server
