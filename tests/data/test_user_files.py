"""Users' own data files as spreadsheets and editors write them: encodings other than UTF-8 are read (UTF-16/32
with a byte-order mark) or named with the `iconv` command their bytes point to, and every message about a
malformed file says what is wrong with it rather than with the mapping, naming the file, the line (and the record)
and the field."""

import json
import logging

import pytest

from clinical_rl.data.loaders import CaseFormatError, load_cases
from clinical_rl.utf8 import NotUtf8Error, decode_text, decode_utf8, resave_hint

LATIN1_ROW = '{"question": "Fièvre et toux depuis 3 jours", "answer": "Pneumonie"}'
ROW = json.loads(LATIN1_ROW)
TEXT = {".jsonl": LATIN1_ROW, ".json": f"[{LATIN1_ROW}]", ".csv": f"question,answer\n{ROW['question']},Pneumonie"}


def _load_error(path, text: str | bytes, **kwargs) -> str:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(CaseFormatError) as err:
        load_cases(str(path), **kwargs)
    return str(err.value)


# ---------------------------------------------------------------------------------------------------------------
# Encodings


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_a_data_file_that_is_not_utf8_names_the_line_and_column(tmp_path, suffix):
    # the bad byte far past the readers' first decoding buffer (8 KiB): the line is the file's, not the buffer's
    good = [{"question": f"question {i}", "answer": "Asthma"} for i in range(400)]
    if suffix == ".jsonl":
        lines = [json.dumps(r, ensure_ascii=False) for r in [*good, ROW]]
        where = "401: not UTF-8 (byte 0xe8 at column 17)"
    elif suffix == ".json":
        lines = ["[", *(json.dumps(r) + "," for r in good), json.dumps(ROW, ensure_ascii=False), "]"]
        where = "402: not UTF-8 (byte 0xe8 at column 17)"
    else:
        lines = ["question,answer", *(f"{r['question']},{r['answer']}" for r in [*good, ROW])]
        where = "402: not UTF-8 (byte 0xe8 at column 3)"
    path = tmp_path / f"latin1{suffix}"
    message = _load_error(path, "\n".join(lines).encode("latin-1") + b"\n")
    assert message == f"{path}:{where}; re-save as UTF-8 (e.g. iconv -f latin1 -t utf-8)"


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_data_files_with_a_byte_order_mark_load(tmp_path, suffix):
    path = tmp_path / f"bom{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + (TEXT[suffix] + "\r\n").encode())
    [case] = load_cases(str(path))
    assert (case.question, case.answer) == (ROW["question"], "Pneumonie")


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_utf16_and_utf32_with_a_byte_order_mark_load(tmp_path, suffix, codec):
    # Seen: Excel's "Unicode text" (UTF-16 LE with a mark) was called "not UTF-8" and the hint converted it from
    # Latin-1, into text full of NULs
    path = tmp_path / f"wide{suffix}"
    text = {".json": f"[{LATIN1_ROW},\r\n{LATIN1_ROW}]\r\n",  # two records, the second past line 1
            ".jsonl": f"{LATIN1_ROW}\r\n{LATIN1_ROW}\r\n",
            ".csv": f"{TEXT['.csv']}\r\n{ROW['question']},Pneumonie"}
    bom = {"utf-16-le": b"\xff\xfe", "utf-16-be": b"\xfe\xff"}.get(codec, b"")  # Python's utf-16/32 write their own
    path.write_bytes(bom + text[suffix].encode(codec))
    cases = load_cases(str(path))
    assert [(c.question, c.answer) for c in cases] == [(ROW["question"], "Pneumonie")] * 2


def test_excel_unicode_text_export_loads_as_tab_separated_utf16(tmp_path, caplog):
    path = tmp_path / "export.csv"
    rows = ["question\tanswer", "Fever, cough and “rusty” sputum\tPneumonia", "Wheeze, chest tightness\tAsthma"]
    path.write_bytes(b"\xff\xfe" + "\r\n".join(rows).encode("utf-16-le") + b"\r\x00\n\x00")
    with caplog.at_level(logging.INFO, logger="clinical_rl.data.rows"):
        cases = load_cases(str(path))
    assert [(c.question, c.answer) for c in cases] == [tuple(r.split("\t")) for r in rows[1:]]
    assert "reading it as tab-separated" in caplog.text


def test_cp1252_curly_quotes_get_the_cp1252_hint_not_latin1(tmp_path):
    # Seen: Latin-1 maps 0x93/0x94 to invisible control characters, so the suggested conversion lost the quotes
    text = "question,answer\n" + "A man with “crushing” chest pain – sweating,Myocardial infarction\n"
    path = tmp_path / "cp1252.csv"
    message = _load_error(path, text.encode("cp1252"))
    assert message.startswith(f"{path}:2: not UTF-8 (byte 0x93 at column 12); re-save as UTF-8")
    assert "Windows-1252 (cp1252)" in message and "iconv -f cp1252 -t utf-8" in message and "latin1" not in message


@pytest.mark.parametrize("codec, order", [("utf-16-le", "le"), ("utf-16-be", "be")])
def test_utf16_without_a_byte_order_mark_is_named_from_its_nul_bytes(tmp_path, codec, order):
    path = tmp_path / "nobom.jsonl"
    message = _load_error(path, (LATIN1_ROW + "\n").encode(codec))
    assert message == (f"{path}:1: the file has NUL bytes, so it is likely UTF-16 ({order.upper()}) without a "
                       f"byte-order mark; re-save as UTF-8 (e.g. iconv -f utf-16{order} -t utf-8)")


def test_a_utf16_file_with_a_bad_code_unit_names_its_line_and_column(tmp_path):
    path = tmp_path / "broken.jsonl"
    data = b"\xff\xfe" + f"{LATIN1_ROW}\n{{\"question\": \"".encode("utf-16-le") + b"\x00\xdc" + '"}\n'.encode(
        "utf-16-le")  # a low surrogate without its high one
    message = _load_error(path, data)
    assert message.startswith(f"{path}:2: not UTF-16 (byte 0x00 at column 15); the file starts with a UTF-16 (LE)")


@pytest.mark.parametrize("data, source", [
    (b"\xff\xfeq\x00", "iconv -f utf-16 -t utf-8"),
    (b"\x00\x00\xfe\xff", "iconv -f utf-32 -t utf-8"),
    (b"\x93quoted\x94", "iconv -f cp1252 -t utf-8"),
    (b"caf\xe9", "iconv -f latin1 -t utf-8"),
    (b"\x81\x8d", "iconv -f latin1 -t utf-8"),  # undefined in cp1252: no reason to guess it
    ("“UTF-8” quotes, ".encode() + b"caf\xe9", "iconv -f latin1 -t utf-8"),  # their 0x80 and 0x9c decode
])
def test_the_resave_hint_matches_the_bytes(data, source):
    assert source in resave_hint(data)
    with pytest.raises(NotUtf8Error) as err:
        decode_utf8(data)  # config files: not read as UTF-16, but told what they are
    assert source in err.value.hint


def test_decode_text_reads_utf16_and_utf32_after_their_mark_only():
    assert decode_text("é\n".encode("utf-16")) == decode_text("é\n".encode("utf-32")) == "é\n"
    assert decode_text(b"\xef\xbb\xbfplain") == "plain"
    with pytest.raises(NotUtf8Error, match="not UTF-16"):
        decode_text(b"\xff\xfeab\x00")  # an odd byte at the end


# ---------------------------------------------------------------------------------------------------------------
# CSV


@pytest.mark.parametrize("delimiter", [";", "\t"])
def test_a_semicolon_or_tab_separated_csv_is_read_with_that_delimiter(tmp_path, delimiter):
    # Seen: "field 'question' missing (the record's columns: question;answer; ...)" for Excel's European CSV
    path = tmp_path / "eu.csv"
    path.write_text(delimiter.join(["question", "answer", "temp"]) + "\n"
                    + delimiter.join(['"Fever; 38,5 °C, cough"', "Pneumonia", "38,5"]) + "\n")
    [case] = load_cases(str(path))
    assert (case.question, case.answer) == ("Fever; 38,5 °C, cough", "Pneumonia")


def test_a_row_that_does_not_fit_a_sniffed_delimiter_says_how_the_file_was_read(tmp_path):
    path = tmp_path / "eu.csv"
    message = _load_error(path, "question;answer\nq;a\nq2\n")
    assert message == (f"{path}:3: 1 cells, the header has 2 (read as ';'-separated, as its header is; a cell that "
                       "holds ';' must be in double quotes)")


def test_an_empty_cell_is_empty_not_missing(tmp_path):
    # Seen: "field 'answer' missing (the record's columns: question, answer; map one with ...)" for a blank cell
    path = tmp_path / "blank.csv"
    assert _load_error(path, "question,answer\nq,a\nq2,\n") == f"{path}:3: field 'answer' is empty"
    assert _load_error(path, "question,answer\nq,a\nq2,  \n") == f"{path}:3: field 'answer' is empty"
    message = _load_error(path, "case,dx\nq,\n", fields={"question": "case", "answer": "dx"})
    assert message == f"{path}:2: field 'answer' (column 'dx') is empty"
    message = _load_error(path, "case,dx\nq,\n", fields={"question": "case", "answer": {"column": "dx"}})
    assert message == f"{path}:2: field 'answer' (column 'dx') is empty"
    message = _load_error(path, "question,diagnosis\nq,a\n")  # an absent column is still missing, with the hint
    assert message == (f"{path}:2: field 'answer' missing (the record's columns: question, diagnosis; map one with "
                       "fields: {answer: COLUMN})")


def test_a_column_name_with_spaces_or_capitals_is_pointed_at(tmp_path):
    path = tmp_path / "spaced.csv"
    message = _load_error(path, "question, Answer\nq,a\n")
    assert message == (f"{path}:2: field 'answer' missing (the record has a column ' Answer': rename it 'answer', or "
                       "map it with fields: {answer: ...})")


def test_a_row_with_extra_cells_says_to_quote_the_delimiter(tmp_path):
    path = tmp_path / "commas.csv"
    message = _load_error(path, "question,answer\nFever, cough,Pneumonia\n")
    assert message == f"{path}:2: 3 cells, the header has 2 (a cell that holds ',' must be in double quotes)"


# ---------------------------------------------------------------------------------------------------------------
# JSON and JSON Lines


def test_a_json_object_at_the_top_level_names_its_keys_and_how_to_fix_it(tmp_path):
    # Seen: "expected a JSON object, found str" for one case, and "found list" for {"data": [...]}
    path = tmp_path / "one.json"
    message = _load_error(path, json.dumps(ROW))
    assert message == (f"{path}:1: a JSON file must be a list of case objects, or an object of case objects keyed by "
                       "id (found an object with keys: 'question', 'answer'; for a single case, put it in a list: "
                       "[{...}])")
    path = tmp_path / "wrapped.json"
    message = _load_error(path, json.dumps({"version": 2, "data": [ROW]}))
    assert message == (f"{path}:1: a JSON file must be a list of case objects, or an object of case objects keyed by "
                       "id (found an object with keys: 'version', 'data'; for {\"data\": [...]}, save that list as "
                       "the file: jq '.[\"data\"]' wrapped.json > cases.json)")


def test_a_json_top_level_of_the_wrong_kind_names_what_it_found(tmp_path):
    path = tmp_path / "text.json"
    message = _load_error(path, '"just a string"')
    assert message == (f"{path}:1: the top level must be a list of records or an object of records keyed by id, "
                       "found str")


def test_json_records_on_one_line_are_told_apart_by_their_index(tmp_path):
    path = tmp_path / "list.json"
    rows = [ROW, ROW, ROW, {"question": "q"}]
    assert _load_error(path, json.dumps(rows)) == (
        f"{path}:1: record [3]: field 'answer' missing (the record's columns: question; map one with fields: "
        "{answer: COLUMN})")
    message = _load_error(path, json.dumps([ROW, {**ROW, "answer": None}]))
    assert message == f"{path}:1: record [1]: field 'answer' is null"
    assert _load_error(path, json.dumps([ROW, "text"])) == f"{path}:1: record [1]: expected a JSON object, found str"


@pytest.mark.parametrize("line, where", [
    ('{"question": "q", "answer": "a"', "at the end of the line"),  # cut short: not "column 1" of the next line
    ('{"question": "q", "answer": "a",}', "at column 33"),  # the '}' where a name should be
    ('{"question": "Fièvre", "answer": a}', "at column 34"),  # columns in characters, not bytes
    ('  {"question": "q" "answer": "a"}', "at column 20"),
])
def test_jsonl_invalid_json_names_the_line_and_the_column_in_it(tmp_path, line, where):
    path = tmp_path / "bad.jsonl"
    message = _load_error(path, f"{LATIN1_ROW}\n{line}\r\n{LATIN1_ROW}\n")
    assert message.startswith(f"{path}:2: invalid JSON (") and message.endswith(f" {where})")


def test_a_json_array_in_a_jsonl_file_and_json_lines_in_a_json_file_are_named(tmp_path):
    path = tmp_path / "array.jsonl"
    message = _load_error(path, json.dumps([ROW, ROW], indent=2))
    assert message.startswith(f"{path}:1: invalid JSON (Expecting value at the end of the line); the file looks "
                              "like one JSON array, not JSON Lines")
    path = tmp_path / "lines.json"
    message = _load_error(path, f"{LATIN1_ROW}\n{LATIN1_ROW}\n")
    assert message.startswith(f"{path}:2: invalid JSON (Extra data at column 1); the file looks like JSON Lines")


# ---------------------------------------------------------------------------------------------------------------
# Paths


def test_a_missing_relative_path_names_the_directory_it_was_looked_in(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        load_cases("my_cases.jsonl")
    assert str(err.value) == (f"data.path: no such file or directory my_cases.jsonl (looked in {tmp_path}: paths "
                              "are relative to the directory the command runs in)")
    with pytest.raises(FileNotFoundError) as err:
        load_cases(str(tmp_path / "absent.jsonl"))
    assert str(err.value) == f"data.path: no such file or directory {tmp_path / 'absent.jsonl'}"
    with pytest.raises(FileNotFoundError, match="no such file or directory my_cases.xlsx"):
        load_cases("my_cases.xlsx")  # not "cannot tell the data format": the file is the first thing to fix
    (tmp_path / "my_cases.jsonl").write_text(LATIN1_ROW + "\n")
    assert [c.answer for c in load_cases("my_cases.jsonl")] == ["Pneumonie"]
