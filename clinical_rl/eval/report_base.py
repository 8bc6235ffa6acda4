"""What the evaluation report, its charts and its W&B dashboards share: how `GroupRow`s are ordered, looked up and
labelled, atomic file writes with safe names, and the Markdown cells and tables of the report.

Ordering is stable everywhere: benchmarks and models in first-seen order, departments in `DEPARTMENTS` order (unknown
ones after, first-seen), languages zh, en, then others first-seen.
"""

from __future__ import annotations

import math
import os
import re
import secrets
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from clinical_rl.data.departments import DEPARTMENTS
from clinical_rl.eval.records import GroupRow

LANGUAGES: tuple[str, ...] = ("zh", "en")
LANGUAGE_NAMES: dict[str, str] = {"zh": "Chinese", "en": "English"}
MISSING = "—"  # a table cell with nothing to show

# ---------------------------------------------------------------------------------------------------------------
# Atomic files
# ---------------------------------------------------------------------------------------------------------------


@contextmanager
def atomic_file(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """A temp file next to `path`, renamed over it only when the block finishes without error.

    `mode`: "w" (text, UTF-8, `\\n` line ends) or "wb". The file gets the permissions `open()` would give it,
    0666 less the umask (0644 under umask 022). Raises what creating, writing or renaming raises; the temp file
    is removed then and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    # Not tempfile.mkstemp: it creates 0600, so reports meant to be shared would be readable by their owner only.
    # O_EXCL keeps mkstemp's guarantee that the name is ours; 48 random bits make a clash practically impossible.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        kwargs = {"encoding": "utf-8", "newline": "\n"} if "b" not in mode else {}
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def file_slug(text: str, fallback: str) -> str:
    """`text` as a file-name stem: runs of other characters than `A-Za-z0-9._-` become `_`; `fallback` when
    nothing is left (e.g. a label in Chinese)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or fallback


# ---------------------------------------------------------------------------------------------------------------
# Ordering, lookup and labels of rows
# ---------------------------------------------------------------------------------------------------------------


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def benchmark_order(rows: Sequence[GroupRow]) -> list[str]:
    """Benchmarks in first-seen order."""
    return _unique(r.benchmark for r in rows)


def model_order(rows: Sequence[GroupRow], benchmark: str | None = None) -> list[str]:
    """Models (of `benchmark`, or of all) in first-seen order."""
    return _unique(r.model for r in rows if benchmark is None or r.benchmark == benchmark)


def department_order(rows: Sequence[GroupRow], benchmark: str) -> list[str]:
    """Departments of `benchmark` in `DEPARTMENTS` order, unknown ones after in first-seen order."""
    present = _unique(r.group for r in rows if r.benchmark == benchmark and r.kind == "department")
    known = [d for d in DEPARTMENTS if d in present]
    return known + [d for d in present if d not in DEPARTMENTS]


def language_order(rows: Sequence[GroupRow], benchmark: str) -> list[str]:
    """Languages of `benchmark`: zh, en, then others in first-seen order."""
    present = _unique(r.group for r in rows if r.benchmark == benchmark and r.kind == "language")
    return [lang for lang in LANGUAGES if lang in present] + [lang for lang in present if lang not in LANGUAGES]


def index_rows(rows: Sequence[GroupRow]) -> dict[tuple[str, str, str, str], GroupRow]:
    """(benchmark, model, kind, group) -> row; a duplicate key is an error upstream, so it raises."""
    index: dict[tuple[str, str, str, str], GroupRow] = {}
    for row in rows:
        key = (row.benchmark, row.model, row.kind, row.group)
        if key in index:
            raise ValueError(f"duplicate GroupRow for benchmark={key[0]!r} model={key[1]!r} {key[2]}={key[3]!r}")
        index[key] = row
    return index


def has_accuracy(row: GroupRow | None) -> bool:
    """A row with cases, a finite accuracy and not all of them failed (`GroupRow.all_failed`): something to show,
    draw or log. The failure check does not rely on `summarize` having set such a row's value to NaN, so that a
    row built otherwise (a test, an older caller) is not shown as 0% either."""
    return (row is not None and row.accuracy.n > 0 and math.isfinite(row.accuracy.value)
            and not row.all_failed)


def department_label(department: str) -> str:
    """English display name: `respiratory` -> `Respiratory`, `infectious_disease` -> `Infectious Disease`."""
    return department.replace("_", " ").strip().title()


def language_label(language: str) -> str:
    """English display name: `zh` -> `Chinese`; unknown codes stay as they are."""
    return LANGUAGE_NAMES.get(language, language)


# ---------------------------------------------------------------------------------------------------------------
# Markdown cells and tables
# ---------------------------------------------------------------------------------------------------------------


def pct(x: float) -> str:
    """A share in percent with one decimal (`0.625` -> `62.5`); `nan` when not finite."""
    return f"{100 * x:.1f}" if math.isfinite(x) else "nan"


def format_accuracy(row: GroupRow | None, *, with_n: bool = False) -> str:
    """`62.5 [55.1, 69.8]` (percent with its 95% CI), without the brackets when the row has no interval (too few
    cases, `Estimate.has_interval`); then in parentheses `n=40` when `with_n`, and `3 failed` when some of the
    group's predictions were errors, which count as not correct: `45.0 [23.1, 66.9] (n=20, 3 failed)`.

    A group whose predictions all failed has no accuracy: `— (20 of 20 failed)`. `—` alone when absent."""
    if row is None:
        return MISSING
    est = row.accuracy
    if row.all_failed:
        return f"{MISSING} ({row.errors} of {est.n} failed)"
    if not has_accuracy(row):
        return MISSING
    text = f"{pct(est.value)} [{pct(est.low)}, {pct(est.high)}]" if est.has_interval else pct(est.value)
    notes = [f"n={est.n}"] if with_n else []
    if row.errors:
        notes.append(f"{row.errors} failed")
    return f"{text} ({', '.join(notes)})" if notes else text


def cell(text: Any) -> str:
    """`text` as one Markdown table cell: `|` escaped, new lines as spaces."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], body: Sequence[Sequence[Any]], align: Sequence[str]) -> list[str]:
    """A Markdown table: the header, the alignment row (`align`: "r" right, anything else left) and the body."""
    lines = ["| " + " | ".join(cell(h) for h in header) + " |"]
    lines.append("|" + "|".join("---:" if a == "r" else ":---" for a in align) + "|")
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in body]
    return lines
