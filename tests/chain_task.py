"""The candidate task as a diagnostic chain: the finding that decides is no longer in the presentation, only in the
examination record (a chest X-ray whose result names it). Answering at once is a guess among K candidates;
ordering the X-ray first and reading its result is right every time.

`warm_start_chain` teaches both behaviours half and half (through the real environment's messages and the same
observation tokens the engines append), so RL starts at accuracy ~ (1 + 1/K) / 2 and has to learn to order the
examination before answering.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

from clinical_rl.data.prompts import render_prompt
from clinical_rl.envs.chain_cases import ChainCase, Exam, write_chain_cases
from clinical_rl.envs.diagnostic_chain import DiagnosticChainConfig, Episode
from clinical_rl.rl.multi_turn import ObservationEncoder
from tests.candidate_task import DIAGNOSES, FINDINGS, SYSTEM_PROMPT, fit, thinking

CHAIN = DiagnosticChainConfig(max_turns=2)
REQUEST = "<request>chest X-ray</request>"
GUESS = "<think>no finding yet</think>\nDiagnosis: "


def make_chain_cases(n: int, seed: int) -> list[ChainCase]:
    rng = random.Random(seed)
    cases = []
    for i in range(n):
        finding = rng.choice(sorted(FINDINGS))
        candidates = rng.sample(DIAGNOSES, len(DIAGNOSES))
        record = (Exam("chest_x_ray", "chest X-ray", "imaging", f"the finding is {finding}"),)
        cases.append(ChainCase(question=f"Candidates: {', '.join(candidates)}.", answer=FINDINGS[finding],
                               id=f"chain-{seed}-{i}", exams=record))
    return cases


def finding_of(case: ChainCase) -> str:
    return case.exams[0].result.removeprefix("the finding is ")


def write_chain_task(path: Path, n: int, seed: int) -> Path:
    write_chain_cases(make_chain_cases(n, seed), path)
    return path


def chain_corpus() -> list[str]:
    """Every string the chain task renders (first messages, observations, replies), to fit a task-sized tokenizer."""
    texts = [SYSTEM_PROMPT, "system user assistant", REQUEST, GUESS]
    for case in make_chain_cases(60, seed=12345):
        episode = Episode(case, CHAIN)
        texts += [episode.first_message(), episode.step(REQUEST) or "", thinking(finding_of(case))]
    return texts + [d for d in DIAGNOSES]


def warm_start_chain(model_dir: Path, steps: int = 400, batch_size: int = 8, lr: float = 1e-3, seed: int = 0) -> None:
    """Supervised: half the rows order the X-ray, read its result and answer right; half guess at once."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    eos = [tokenizer.eos_token_id]
    observe = ObservationEncoder(tokenizer)
    rows = []
    for case in make_chain_cases(128, seed):
        episode = Episode(case, CHAIN)
        prompt = encode(render_prompt(tokenizer, replace(case, question=episode.first_message()), SYSTEM_PROMPT))
        observation = observe(episode.step(REQUEST) or "")
        answer = encode(thinking(finding_of(case)) + case.answer) + eos
        ordered = encode(REQUEST) + eos
        rows.append((prompt + ordered + observation + answer,
                     [0] * len(prompt) + [1] * len(ordered) + [0] * len(observation) + [1] * len(answer)))
        rows += [(prompt + encode(GUESS + d) + eos, [0] * len(prompt) + [1] * (len(encode(GUESS + d)) + 1))
                 for d in DIAGNOSES]
    ordering, guessing = rows[::4], [r for i, r in enumerate(rows) if i % 4]

    def batch(rng: random.Random) -> list[tuple[list[int], list[int]]]:
        return [rng.choice(ordering if rng.random() < 0.5 else guessing) for _ in range(batch_size)]

    fit(model_dir, batch, steps, lr, seed)
