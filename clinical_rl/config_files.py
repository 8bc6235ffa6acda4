"""Config files: a YAML file plus dotted command-line overrides (`algo.kl_coef=0.01`) -> a validated `RunConfig`;
every error names the file, the line and the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from clinical_rl.config import RunConfig


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the file, line and key."""


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["a.b=1", "c=x"]` -> nested dict; values are parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {part!r}")
        node[leaf] = yaml.safe_load(raw) if raw else None
    return tree


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _yaml_line(text: str, loc: tuple[str | int, ...]) -> int | None:
    """1-based line of the deepest key of `loc` that exists in the YAML text."""
    node = yaml.compose(text)
    line = None
    for part in loc:
        if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]  # a list item (eval.benchmarks.0): its own line
            line = node.start_mark.line + 1
            continue
        if not isinstance(node, yaml.MappingNode):
            break
        match = next(((k, v) for k, v in node.value if k.value == str(part)), None)
        if match is None:
            break
        line, node = match[0].start_mark.line + 1, match[1]
    return line


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config, apply dotted overrides, validate; errors name file, line and key."""
    text, raw = "", {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        text = path.read_text()
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML: {err}") from err
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping of config sections")
    from_cli = parse_overrides(overrides or [])
    try:
        return RunConfig.model_validate(_deep_merge(raw, from_cli))
    except ValidationError as err:
        raise ConfigError(_describe(err, path, text, from_cli)) from None


def _describe(err: ValidationError, path: Path | None, text: str, from_cli: dict[str, Any]) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        problem = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        where = "command line"
        if path is not None and not _in_tree(from_cli, e["loc"]):
            line = _yaml_line(text, e["loc"]) if text else None
            where = f"{path}:{line}" if line else str(path)
        lines.append(f"{where}: {key}: {problem}")
    return "invalid config:\n  " + "\n  ".join(lines)


def _in_tree(tree: dict[str, Any], loc: tuple[str | int, ...]) -> bool:
    node: Any = tree
    for part in loc:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return bool(loc)


def dump_config(cfg: RunConfig) -> str:
    """The resolved tree as YAML (what `clinical-rl plan` prints and what a run stores)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
