"""The cases an RL run trains on: plain cases, or chain cases when the run plays an environment (`env`)."""

from __future__ import annotations

from pathlib import Path

from clinical_rl.config_stages import DataConfig
from clinical_rl.data.cases import Case
from clinical_rl.data.departments import DEPARTMENTS
from clinical_rl.data.loaders import SHARED_FILES, load_cases


def load_rl_cases(data: DataConfig, seed: int, chain: bool = False) -> list[Case]:
    """`data`'s cases (`load_cases`); with `chain` (a diagnostic-chain run), chain cases: the knowledge base's for
    `builtin` (`data.language` or both languages, `builtin_per_disease` each), MedR-Bench's for `format: medrbench`
    (or its shared file's name), else a chain-case JSONL (`envs.chain_cases.write_chain_cases`); then filtered to
    `data.departments` and cut to `data.limit`, in file order.

    Raises ValueError (bad departments, `data.fields` with chain cases), FileNotFoundError and CaseFormatError."""
    if not chain:
        return load_cases(data.path, data.format, data.fields or None, data.language, data.limit, seed,
                          departments=data.departments, builtin_per_disease=data.builtin_per_disease)
    from clinical_rl.envs.chain_cases import chain_cases_from_kb, load_chain_cases
    from clinical_rl.envs.medrbench_chain import load_medrbench_chain

    if data.fields:
        raise ValueError("data.fields: chain cases have a fixed layout (envs/chain_cases.py); remove the mapping")
    unknown = sorted(set(data.departments or ()) - set(DEPARTMENTS))
    if unknown:
        raise ValueError(f"data.departments: unknown {unknown}; valid: {', '.join(DEPARTMENTS)}")
    if data.path == "builtin":
        languages = (data.language,) if data.language else ("en", "zh")
        cases: list[Case] = list(chain_cases_from_kb(languages, data.builtin_per_disease, seed))
    elif "medrbench" in (data.format, SHARED_FILES.get(Path(data.path).name)):
        cases = list(load_medrbench_chain(data.path))
    else:
        cases = list(load_chain_cases(data.path))
    if data.departments:
        cases = [c for c in cases if c.department in data.departments]
    return cases[: data.limit] if data.limit else cases
