"""A diagnosis task a tiny model can learn in minutes: K candidates named in the prompt, the finding decides.

`warm_start` is a few seconds of plain supervised training that teaches the think-then-answer format with a
uniformly random pick among the candidates, so PPO starts at accuracy ~1/K and has the finding -> diagnosis
mapping to discover from the reward alone.
"""

from __future__ import annotations

import json
import random
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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    cases = make_cases(256, seed)
    prompts = [encode(render_prompt(tokenizer, Case(c["question"], ""), SYSTEM_PROMPT)) for c in cases]
    answers = {(c["finding"], d): encode(thinking(c["finding"]) + d) + [tokenizer.eos_token_id]
               for c in cases for d in DIAGNOSES}
    model.train()
    for _ in range(steps):
        picks = rng.sample(range(len(cases)), batch_size)
        rows = [(prompts[i], answers[cases[i]["finding"], rng.choice(DIAGNOSES)]) for i in picks]
        width = max(len(p) + len(a) for p, a in rows)
        ids = torch.full((batch_size, width), tokenizer.eos_token_id)
        labels = torch.full((batch_size, width), -100)
        attn = torch.zeros((batch_size, width), dtype=torch.long)
        for i, (p, a) in enumerate(rows):
            ids[i, : len(p) + len(a)] = torch.tensor(p + a)
            labels[i, len(p) : len(p) + len(a)] = torch.tensor(a)
            attn[i, : len(p) + len(a)] = 1
        model(input_ids=ids, attention_mask=attn, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(model_dir)
