"""The README runs as written: its "Use your own data" examples load, its commands parse, every subcommand's help
says what it does and shows an example, and the demo paths it names are the ones `make demo` writes."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from clinical_rl.cli import main
from clinical_rl.cli_args import COMMANDS, build_parser
from clinical_rl.config_files import load_config
from clinical_rl.data.loaders import load_cases

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = {p.relative_to(ROOT): p.read_text() for p in [ROOT / "README.md", *ROOT.glob("launch/README.md")]}


def section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end >= 0 else None]


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block, in order."""
    return re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S)


def commands() -> list[tuple[Path, str]]:
    """Every `clinical-rl ...` line of a bash block in the READMEs, continuation lines joined, comments cut."""
    found = []
    for path, text in DOCS.items():
        for lang, body in code_blocks(text):
            if lang != "bash":
                continue
            for line in body.replace("\\\n", " ").splitlines():
                line = line.strip()
                if line.startswith("clinical-rl "):
                    found.append((path, shlex.split(line, comments=True)))
    return found


def test_use_your_own_data_examples_load(tmp_path, monkeypatch):
    blocks = code_blocks(section("Use your own data"))
    assert [lang for lang, _ in blocks] == ["jsonl", "yaml", "csv", "yaml"]
    (tmp_path / "my_cases.jsonl").write_text(blocks[0][1])
    (tmp_path / "my_cases.csv").write_text(blocks[2][1])
    monkeypatch.chdir(tmp_path)  # the examples name their files relative to where the command runs
    loaded = {}
    for i in (1, 3):
        (tmp_path / "my.yaml").write_text(blocks[i][1])
        d = load_config(tmp_path / "my.yaml").data
        loaded[d.path] = load_cases(d.path, d.format, d.fields, d.language, d.limit)
    jsonl, csv = loaded["my_cases.jsonl"], loaded["my_cases.csv"]
    assert [(c.id, c.answer, c.department) for c in jsonl] == [
        ("r1", "Lung cancer", "respiratory"), ("r2", "Community-acquired pneumonia", "respiratory")]
    # ICD-10 chapters: I (circulatory) -> cardiology, E (endocrine) -> endocrinology
    assert [(c.id, c.answer, c.department) for c in csv] == [
        ("c1", "Acute myocardial infarction", "cardiology"), ("c2", "Hyperthyroidism", "endocrinology")]


def test_a_csv_without_its_mapping_names_the_field_and_says_how_to_map_it(tmp_path):
    csv = tmp_path / "my_cases.csv"
    csv.write_text(code_blocks(section("Use your own data"))[2][1])
    with pytest.raises(ValueError, match=r"my_cases.csv:2: field 'question' missing.*fields"):
        load_cases(csv)


@pytest.mark.parametrize("where,argv", commands(), ids=lambda v: " ".join(v) if isinstance(v, list) else str(v))
def test_readme_commands_parse(where, argv):
    args, extra = build_parser("").parse_known_args(argv[1:])
    assert all("=" in a and not a.startswith("-") for a in extra), f"{where}: {argv}: unknown flags {extra}"
    if getattr(args, "config", None):
        assert (ROOT / args.config).is_file() or args.config == "my.yaml", f"{where}: no config {args.config}"


def test_every_subcommand_help_says_what_it_does_and_shows_an_example(capsys):
    for name, (_, description, example) in COMMANDS.items():
        with pytest.raises(SystemExit) as done:
            main([name, "--help"])
        assert done.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        assert " ".join(description.split()) in text and f"example: {example}" in text, name
        assert example.startswith(f"clinical-rl {name}")
        build_parser("").parse_known_args(shlex.split(example)[1:])


def test_demo_paths_in_the_readme_are_the_ones_the_pipeline_writes():
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    out = Path(cfg.output_dir)
    written = {out / cfg.sft.output_subdir, out / "ppo" / "policy", out / "eval" / "report.md"}
    named = {Path(m) for m in re.findall(r"(runs/demo/[\w./]+[\w])", README)}
    assert named and named <= written, named - written
