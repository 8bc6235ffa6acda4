"""The synthesis store: torn-line recovery, duplicate ids, concurrent appends, resume and restart."""

import json
import threading

import pytest

from clinical_rl.synthesis.store import StoreError, SynthesisStore


def record(item_id: str, state: str = "done") -> dict:
    row = {"question": f"q {item_id}", "thinking": "t", "response": "r", "reference": "ref", "language": "en",
           "department": "other", "icd10": None, "source": "test"}
    return {"id": item_id, "state": state, "row": row, "lineage": {"calls": 1}, "filter_reason": None}


def lines(path) -> list[dict]:
    text = path.read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_append_then_resume_skips_written_ids(tmp_path):
    path = tmp_path / "out.jsonl"
    with SynthesisStore(path) as store:
        store.append(record("a"))
        store.append(record("b", "failed"))
    with SynthesisStore(path) as store:
        assert store.done_ids() == {"a", "b"}
        store.append(record("c", "filtered"))
    assert [r["id"] for r in lines(path)] == ["a", "b", "c"]


def test_torn_last_line_is_cut_away(tmp_path, caplog):
    path = tmp_path / "out.jsonl"
    with SynthesisStore(path) as store:
        store.append(record("a"))
    whole = path.read_bytes()
    with path.open("ab") as f:
        f.write(json.dumps(record("b")).encode()[:40])  # a kill in the middle of the write
    with SynthesisStore(path) as store:
        assert store.done_ids() == {"a"}
        assert path.read_bytes() == whole
        store.append(record("b"))
    assert "torn last line" in caplog.text
    assert [r["id"] for r in lines(path)] == ["a", "b"]


def test_unparsable_last_line_with_newline_is_cut_too(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text(json.dumps(record("a")) + "\n" + '{"id": "b", "sta\n')
    with SynthesisStore(path) as store:
        assert store.done_ids() == {"a"}
    assert [r["id"] for r in lines(path)] == ["a"]


def test_corrupt_middle_line_is_an_error(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text(json.dumps(record("a")) + "\nnot json\n" + json.dumps(record("b")) + "\n")
    with pytest.raises(StoreError, match=r"out.jsonl:2: not a record"):
        SynthesisStore(path)


def test_duplicate_ids_are_an_error_naming_the_lines(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("".join(json.dumps(record(i)) + "\n" for i in ["a", "b", "a"]))
    with pytest.raises(StoreError, match=r"id 'a' appears on lines 1 and 3"):
        SynthesisStore(path)
    with SynthesisStore(tmp_path / "other.jsonl") as store:
        store.append(record("x"))
        with pytest.raises(StoreError, match="already on line 1"):
            store.append(record("x", "failed"))


def test_concurrent_appends_from_threads_give_whole_lines(tmp_path):
    path = tmp_path / "out.jsonl"
    big = "思考" * 3000  # lines of several pages, so unsynchronised writes would interleave
    with SynthesisStore(path) as store:
        def worker(k: int) -> None:
            for j in range(25):
                r = record(f"{k}-{j}")
                r["row"]["thinking"] = big
                store.append(r)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    rows = lines(path)
    assert len(rows) == 200 and len({r["id"] for r in rows}) == 200
    assert all(r["row"]["thinking"] == big for r in rows)


def test_restart_starts_a_new_file_and_a_second_writer_is_refused(tmp_path):
    path = tmp_path / "out.jsonl"
    with SynthesisStore(path) as store:
        store.append(record("a"))
        with pytest.raises(StoreError, match="another process is writing"):
            SynthesisStore(path)
    with SynthesisStore(path, restart=True) as store:
        assert store.done_ids() == set()
    assert path.read_text() == ""


def test_bad_state_is_rejected(tmp_path):
    with SynthesisStore(tmp_path / "out.jsonl") as store, pytest.raises(ValueError, match="state 'ok'"):
        store.append(record("a", "ok"))
