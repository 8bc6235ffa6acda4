"""Append-only JSONL of synthesized items, one line per finished case, that survives kills and resumes.

Each line: `{"id", "state": "done" | "failed" | "filtered", "row": {question, thinking, response, reference,
language, department, icd10, source}, "lineage": {...}, "filter_reason": str | None}`. A line is written with one
write, then fsync'd, so a kill leaves at most a torn last line; opening the file cuts that line away, and the
case it belonged to is synthesized again. Every id appears at most once: a repeated id is an error.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATES = ("done", "failed", "filtered")


class StoreError(ValueError):
    """The output file is corrupt beyond a torn last line, or already holds the id being appended."""


class SynthesisStore:
    """`SynthesisStore(path)` resumes `path` (recovering a torn last line); `restart=True` starts it anew."""

    def __init__(self, path: str | Path, restart: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            # Two writers on one file would interleave their resumes; the kernel drops the lock when a process dies.
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise StoreError(f"{self.path}: another process is writing this file") from None
        if restart:
            os.ftruncate(self._fd, 0)
        self._ids = self._recover()
        os.fsync(self._fd)
        _fsync_dir(self.path.parent)  # the file itself must survive a crash right after it was created

    def _recover(self) -> dict[str, int]:
        """Ids in the file -> line number; cuts a torn last line; any other bad line or a repeated id raises."""
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        tail = lines.pop()  # bytes after the last newline: b"" unless the last write was torn
        ids: dict[str, int] = {}
        keep = len(data) - len(tail)
        for number, raw in enumerate(lines, start=1):
            try:
                record = json.loads(raw)
                item_id = record["id"]
            except (ValueError, TypeError, KeyError):
                if number < len(lines):
                    raise StoreError(f"{self.path}:{number}: not a record (corrupt line in the middle)") from None
                # A complete-looking last line that does not parse was torn too (e.g. cut within the write).
                keep -= len(raw) + 1
                break
            if item_id in ids:
                raise StoreError(f"{self.path}: id {item_id!r} appears on lines {ids[item_id]} and {number}")
            ids[item_id] = number
        if keep < len(data):
            log.warning("%s: cutting a torn last line (%d bytes) left by an interrupted write; its case is redone",
                        self.path, len(data) - keep)
            os.ftruncate(self._fd, keep)
        return ids

    def done_ids(self) -> set[str]:
        """Ids already in the file, whatever their state: a resumed run skips them."""
        with self._lock:
            return set(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as one line, durably; thread-safe."""
        if record.get("state") not in STATES:
            raise ValueError(f"record state {record.get('state')!r} is not one of {', '.join(STATES)}")
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        with self._lock:
            if record["id"] in self._ids:
                raise StoreError(f"{self.path}: id {record['id']!r} is already on line {self._ids[record['id']]}")
            written = os.write(self._fd, data)
            while written < len(data):  # a short write (full disk, signal) continues where it stopped
                written += os.write(self._fd, data[written:])
            os.fsync(self._fd)
            self._ids[record["id"]] = len(self._ids) + 1

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)  # also releases the flock
                self._fd = -1

    def __enter__(self) -> SynthesisStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
