"""SFT data and trainer: rows -> labelled samples, row files, and training in DeepSpeed (CPU, gloo, world size 1).

The trainer runs in this process (one DeepSpeed engine, world size 1); its process group and the rendezvous
environment it sets are torn down afterwards so later tests start clean.
"""

from __future__ import annotations

import json
import math
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from clinical_rl.actors.sft_trainer import SFTTrainer
from clinical_rl.actors.trainer_rank import GroupRank
from clinical_rl.config import SFTConfig
from clinical_rl.config_base import ModelConfig
from clinical_rl.data.cases import Case
from clinical_rl.data.generator import generate_cases
from clinical_rl.data.prompts import THINK_THEN_ANSWER, render_prompt
from clinical_rl.device import Device
from clinical_rl.models import build_tiny_model, train_tiny_tokenizer
from clinical_rl.sft.dataset import IGNORE, SFTRow, encode_row, encode_rows, load_rows, target_text
from clinical_rl.sft.packing import PackedBatch, label_loss_sum, make_batches

CFG = SFTConfig(lr=5e-3, max_len=1024, micro_batch_size=1, epochs=3)


def row_of(case: Case) -> SFTRow:
    """A templated long-CoT row for a generated case."""
    return SFTRow(case.question, f"The findings point to {case.answer}.", f"Diagnosis: {case.answer}", case.language)


@pytest.fixture(scope="module")
def rows() -> list[SFTRow]:
    return [row_of(case) for case in generate_cases(16, seed=3)]  # both languages


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, rows: list[SFTRow]) -> Path:
    root = tmp_path_factory.mktemp("sft")
    corpus = [*THINK_THEN_ANSWER.values(), "system user assistant"] + [r.question + target_text(r) for r in rows]
    return build_tiny_model(root / "model", train_tiny_tokenizer(corpus, root / "tokenizer", vocab_size=1024))


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path):
    return AutoTokenizer.from_pretrained(model_dir)


# --- rows -> samples ----------------------------------------------------------------------------------------------


def test_labels_cover_exactly_thinking_response_and_eos(tokenizer, rows: list[SFTRow]):
    row = rows[0]
    sample = encode_row(tokenizer, row, max_len=4096)
    prompt = render_prompt(tokenizer, Case(row.question, "", language=row.language))
    n = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert tokenizer.decode(sample.input_ids[:n]) == prompt  # the policy's own conversation
    assert sample.labels[:n] == [IGNORE] * n
    assert sample.labels[n:] == sample.input_ids[n:] and sample.labels[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(sample.labels[n:-1]) == f"<think>\n{row.thinking}\n</think>\n{row.response}"
    assert not sample.truncated


def test_truncation_cuts_the_target_end_and_counts(tokenizer, rows: list[SFTRow]):
    full = [encode_row(tokenizer, r, max_len=4096) for r in rows[:3]]
    prompts = [sum(label == IGNORE for label in s.labels) for s in full]
    max_len = max(prompts) + 1  # every row keeps a target token; the longer ones lose the end of their target
    rows_ = rows[:3] + [SFTRow("x " * max(prompts) * 2, "t", "r")]  # a prompt longer than max_len
    encoded = encode_rows(tokenizer, rows_, max_len)
    cut = [len(s) > max_len for s in full]
    assert 0 < sum(cut) < 3  # both cases occur
    assert (encoded.truncated, encoded.dropped, len(encoded.samples)) == (sum(cut), 1, 3)
    for sample, whole, was_cut in zip(encoded.samples, full, cut):
        assert sample.input_ids == whole.input_ids[:max_len] and sample.labels == whole.labels[:max_len]
        assert sample.truncated == was_cut


def write_lines(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_load_rows_synthesis_and_plain(tmp_path: Path):
    row = {"question": "q", "thinking": "t", "response": "r", "language": "zh"}
    synthesis = write_lines(tmp_path / "synth.jsonl", [
        {"id": "a", "state": "done", "row": {**row, "reference": "x", "department": "other"}},
        {"id": "b", "state": "failed", "row": None},
        "",
        {"id": "c", "state": "filtered", "row": row},
    ])
    loaded = load_rows(synthesis)
    assert loaded.rows == [SFTRow("q", "t", "r", "zh")] and loaded.not_done == 2
    plain = load_rows(write_lines(tmp_path / "plain.jsonl", [row, {**row, "language": "en"}]))
    assert [r.language for r in plain.rows] == ["zh", "en"] and plain.not_done == 0


@pytest.mark.parametrize("record, message", [
    ({"question": "q", "thinking": "t", "language": "en"}, r"bad.jsonl:2: field 'response' missing"),
    ({"question": "q", "thinking": 3, "response": "r", "language": "en"}, r"bad.jsonl:2: field 'thinking' must be str"),
    ({"question": "q", "thinking": " ", "response": "r", "language": "en"}, r"bad.jsonl:2: field 'thinking' is empty"),
    ({"question": "q", "thinking": "t", "response": "r", "language": "fr"}, r"bad.jsonl:2: field 'language' is 'fr'"),
    ({"id": "a", "state": "done"}, r"bad.jsonl:2: field 'row' missing"),
    ("{not json", r"bad.jsonl:2: invalid JSON"),
])
def test_bad_line_names_file_line_and_field(tmp_path: Path, record, message: str):
    good = {"question": "q", "thinking": "t", "response": "r", "language": "en"}
    with pytest.raises(ValueError, match=message):
        load_rows(write_lines(tmp_path / "bad.jsonl", [good, record]))


# --- trainer ------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def batches(tokenizer, rows: list[SFTRow]) -> list[PackedBatch]:
    samples = encode_rows(tokenizer, rows, CFG.max_len).samples
    return make_batches(samples, CFG.max_len, CFG.micro_batch_size, CFG.pack, tokenizer.pad_token_id)


@pytest.fixture(scope="module")
def trainer(model_dir: Path, batches: list[PackedBatch]) -> Iterator[SFTTrainer]:
    import torch.distributed as dist

    env = dict(os.environ)
    sft = SFTTrainer(
        ModelConfig(path=str(model_dir)), CFG, Device("cpu"), model_path=str(model_dir),
        group=GroupRank(0, 1, "127.0.0.1", free_port()), steps_per_epoch=len(batches), seed=0,
    )
    yield sft
    dist.destroy_process_group()
    os.environ.clear()
    os.environ.update(env)  # init_distributed's RANK / MASTER_PORT / ... must not leak into later tests


@torch.no_grad()
def hf_loss(model_dir: Path, batches: list[PackedBatch]) -> float:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    total = sum(label_loss_sum(model(**b.model_inputs(False, torch.float32, torch.device("cpu"))).logits, b.labels)
                for b in batches)
    return float(total) / sum(b.num_label_tokens for b in batches)


def test_sft_lowers_loss_and_saves_a_loadable_model(trainer: SFTTrainer, batches, model_dir: Path, tokenizer,
                                                    tmp_path: Path):
    assert len(batches) < 16  # rows were packed
    before = trainer.evaluate_loss(batches)
    assert before == pytest.approx(hf_loss(model_dir, batches), abs=1e-5)
    history = [trainer.train_steps(batches) for _ in range(CFG.epochs)]
    after = trainer.evaluate_loss(batches)
    assert after < 0.7 * before, (before, after, history)
    assert set(history[0]) == {"sft/loss", "sft/lr", "sft/grad_norm", "sft/label_tokens", "perf/sft_tokens_per_s"}
    steps, warmup = CFG.epochs * len(batches), 1  # ceil(0.03 * steps) for steps <= 33
    for epoch, metrics in enumerate(history):  # the rate of each epoch's last step: cosine after linear warmup
        progress = ((epoch + 1) * len(batches) - 1 - warmup) / (steps - warmup)
        assert metrics["sft/lr"] == pytest.approx(CFG.lr * 0.5 * (1 + math.cos(math.pi * progress)), rel=1e-6)
    out = tmp_path / "sft"
    trainer.save_pretrained(str(out))
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert hf_loss(out, batches) == pytest.approx(after, abs=1e-5)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    prompt = render_prompt(tokenizer, Case("A 40-year-old man presents with cough.", ""))
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    generated = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] > ids.shape[1]


@pytest.mark.vllm
def test_sft_checkpoint_generates_in_vllm(trainer: SFTTrainer, tokenizer, tmp_path: Path):
    from vllm import LLM, SamplingParams

    out = tmp_path / "sft_vllm"
    trainer.save_pretrained(str(out))
    llm = LLM(str(out), dtype="float32", enforce_eager=True, max_model_len=1024, seed=0)
    prompt = render_prompt(tokenizer, Case("A 40-year-old man presents with cough.", ""))
    completion = llm.generate([prompt], SamplingParams(max_tokens=8, temperature=0.0))[0].outputs[0]
    assert len(completion.token_ids) > 0
