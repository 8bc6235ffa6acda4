"""A diagnosis task a tiny model can learn in minutes: K candidates named in the prompt, the finding decides.

`warm_start` is a few seconds of plain supervised training that teaches the think-then-answer format with a
uniformly random pick among the candidates, so PPO starts at accuracy ~1/K and has the finding -> diagnosis
mapping to discover from the reward alone.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import torch

from clinical_rl.data.cases import Case
from clinical_rl.data.prompts import render_prompt

FINDINGS = {"cough": "flu", "toe": "gout", "rash": "measles"}
DIAGNOSES = sorted(set(FINDINGS.values()))
K = len(DIAGNOSES)
SYSTEM_PROMPT = "Think, then diagnose."


def thinking(finding: str) -> str:
    """The reasoning the warm start teaches: restate the deciding finding, then answer."""
    return f"<think>the finding is {finding}</think>\nDiagnosis: "


def make_cases(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        finding = rng.choice(sorted(FINDINGS))
        candidates = rng.sample(DIAGNOSES, K)
        cases.append({"question": f"Candidates: {', '.join(candidates)}. Finding: {finding}.",
                      "answer": FINDINGS[finding], "finding": finding})
    return cases


def tokenizer_corpus() -> list[str]:
    """Every string the task renders, to fit a task-sized tokenizer."""
    texts = [SYSTEM_PROMPT, "system user assistant"]
    return texts + [c["question"] + thinking(c["finding"]) + c["answer"] for c in make_cases(300, seed=12345)]


def write_cases(path: Path, n: int, seed: int) -> Path:
    with path.open("w") as f:
        for case in make_cases(n, seed):
            f.write(json.dumps({"question": case["question"], "answer": case["answer"]}) + "\n")
    return path


def warm_start(model_dir: Path, steps: int = 200, batch_size: int = 32, lr: float = 1e-3, seed: int = 0) -> None:
    """Supervised format training with a uniformly random candidate as target; overwrites the model in place."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    cases = make_cases(256, seed)
    prompts = [encode(render_prompt(tokenizer, Case(c["question"], ""), SYSTEM_PROMPT)) for c in cases]
    answers = {(c["finding"], d): encode(thinking(c["finding"]) + d) + [tokenizer.eos_token_id]
               for c in cases for d in DIAGNOSES}

    def batch(rng: random.Random) -> list[tuple[list[int], list[int]]]:
        picks = rng.sample(range(len(cases)), batch_size)
        rows = [(prompts[i], answers[cases[i]["finding"], rng.choice(DIAGNOSES)]) for i in picks]
        return [(p + a, [0] * len(p) + [1] * len(a)) for p, a in rows]

    fit(model_dir, batch, steps, lr, seed)


def fit(model_dir: Path, batch: Callable[[random.Random], list[tuple[list[int], list[int]]]], steps: int, lr: float,
        seed: int) -> None:
    """`steps` AdamW steps of next-token cross-entropy on `batch(rng)`'s rows (token ids, 1 where the token is a
    target); overwrites the model in place."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    rng = random.Random(seed)
    pad = AutoTokenizer.from_pretrained(model_dir).eos_token_id
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        rows = batch(rng)
        width = max(len(ids) for ids, _ in rows)
        ids = torch.full((len(rows), width), pad)
        labels = torch.full((len(rows), width), -100)
        attn = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (row, target) in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            labels[i, : len(row)] = torch.where(torch.tensor(target).bool(), torch.tensor(row), -100)
            attn[i, : len(row)] = 1
        model(input_ids=ids, attention_mask=attn, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(model_dir)
