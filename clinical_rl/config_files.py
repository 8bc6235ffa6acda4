"""Config files: a YAML file plus dotted command-line overrides (`algo.kl_coef=0.01`) -> a validated `RunConfig`;
every error names the file, the line and the key. A file must be UTF-8 (a byte-order mark is allowed), and a key
given twice in one mapping is an error rather than the last one silently winning."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from clinical_rl.config import RunConfig
from clinical_rl.utf8 import NotUtf8Error, decode_utf8


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
        node[leaf] = load_yaml(raw, f"override {key}") if raw else None
    return tree


def load_yaml(text: str, where: str) -> Any:
    """The YAML value of `text` (a file's text, an override's value, a flag's argument).

    Raises:
        ConfigError: invalid YAML, or a key given twice in one mapping (YAML would keep the last silently); the
            message starts with `where` and names the line of each repeated key.
    """
    try:
        node = yaml.compose(text)
        duplicates = _duplicate_keys(node) if node is not None else []
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: invalid YAML: {str(err).replace(chr(34) + '<unicode string>' + chr(34), where)}") \
            from None
    if duplicates:
        raise ConfigError("\n".join(f"{where}:{d}" for d in duplicates))
    return value


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


def _duplicate_keys(node: yaml.Node, path: tuple[str, ...] = (), seen: set[int] | None = None) -> list[str]:
    """`line: key 'a.b' appears twice (first at line N)` for every key repeated within one mapping, at any depth."""
    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias of a node already walked
        return []
    seen.add(id(node))
    found: list[str] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            line, name = key.start_mark.line + 1, str(key.value)
            # `<<` merges another mapping in; keys given beside it override the merged ones, as YAML intends
            if isinstance(key, yaml.ScalarNode) and name != "<<":
                dotted = ".".join((*path, name))
                if (key.tag, name) in first:
                    found.append(f"{line}: key '{dotted}' appears twice (first at line {first[key.tag, name]})")
                first.setdefault((key.tag, name), line)
            found += _duplicate_keys(value, (*path, name), seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found += _duplicate_keys(item, (*path, str(i)), seen)
    return found


def _read_text(path: Path) -> str:
    """The text of config file `path`.

    Raises:
        ConfigError: the file is missing or not UTF-8 (naming its line, column and byte offset).
    """
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return decode_utf8(path.read_bytes())
    except NotUtf8Error as err:
        raise ConfigError(f"{path}:{err.line}: {err}; {err.hint}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config, apply dotted overrides, validate; errors name file, line and key.

    Raises:
        ConfigError: a missing or non-UTF-8 file, invalid YAML, a key given twice in one mapping, a malformed
            override, or a value the config rejects; each names the file and line (or the command line) and key.
    """
    text, raw = "", {}
    if path is not None:
        path = Path(path)
        text = _read_text(path)
        raw = load_yaml(text, str(path)) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping of config sections")
    from_cli = parse_overrides(overrides or [])
    try:
        return RunConfig.model_validate(_deep_merge(_deep_merge(_section_defaults(RunConfig()), raw), from_cli))
    except ValidationError as err:
        raise ConfigError(_describe(err, path, text, from_cli)) from None


def _section_defaults(node: BaseModel) -> dict[str, Any]:
    """The values a section's default sets beyond its class's defaults (eval.engine: max_model_len 4096 where
    EngineConfig says 2048), at any depth: a partial section in a file or override is laid over them, so it keeps
    them. Only those: a key the user did not write stays unset (`model_fields_set`), as the cluster checks need."""
    out: dict[str, Any] = {}
    for name in type(node).model_fields:
        value = getattr(node, name)
        if isinstance(value, BaseModel):
            section = _deep_merge(value.model_dump(mode="json", exclude_unset=True), _section_defaults(value))
            if section:
                out[name] = section
    return out


def _describe(err: ValidationError, path: Path | None, text: str, from_cli: dict[str, Any]) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        # A model validator's message names its own keys; pydantic's "Value error, " prefix says nothing more.
        problem = "unknown key" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
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


def config_hash(cfg: RunConfig) -> str:
    """12 hex digits of the SHA-256 of the resolved config (`dump_config`): names one exact configuration in
    reports, pipeline markers and run directories."""
    return hashlib.sha256(dump_config(cfg).encode()).hexdigest()[:12]
