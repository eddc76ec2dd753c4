"""Editor settings: a tree of frozen, keyword-only dataclasses, and one converter from the wire.

The wire is camelCase JSON (``maxLines``); the dataclasses are snake_case (``max_lines``).
``settings_from_wire`` never raises on user input: every invalid value (wrong type, out
of range, unknown choice) becomes a human-readable problem and that one field falls back
to its default. Unknown keys are logged and ignored, so an older server tolerates a
newer editor extension.

Sources, lowest precedence first: built-in defaults, command-line overrides
(``rubytailor serve --model ...``), ``initializationOptions``, then the client's
``workspace/configuration`` section ``rubytailor``. A ``null`` (or, for ``modelPath``,
an empty string) means "not set here", so an editor that sends every setting with its
blank default does not mask the layers below it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from rubytailor import paths

logger = logging.getLogger(__name__)

SECTION = "rubytailor"

BackendKind = Literal["auto", "llamacpp", "ctransformers", "transformers", "fake"]


def _default_model_path() -> str:
    return str(paths.default_model_dir())


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything an editor can set. Field metadata holds the validation rules."""

    enable: bool = True
    backend: BackendKind = "auto"
    # A model directory, or for "fake" a JSON script. "auto": ctransformers (GGML) for
    # StarCoder-architecture models when it is installed, else transformers.
    model_path: str = field(default_factory=_default_model_path, metadata={"blank_is_unset": True})
    max_lines: int = field(default=8, metadata={"min": 1, "max": 50})
    max_tokens: int = field(default=64, metadata={"min": 1, "max": 512})
    # Capped again at request time by the loaded model's context length. 512, not the
    # 1024 the model sees: on planner and casa 1024 adds 0-1 point of exact match over
    # 512 and costs a third more per keystroke (README "Figures").
    max_prompt_tokens: int = field(default=512, metadata={"min": 32, "max": 131_072})
    max_file_bytes: int = field(default=1_000_000, metadata={"min": 1, "max": 100_000_000})
    diagnostics: bool = True
    # One thread by default: a small model at batch size 1 gains little from more, and
    # extra threads spin-wait against whatever else the laptop runs (measured: p50 40 ms
    # with 1 thread vs 2.4 s with 2 while another process kept both cores busy).
    threads: int | None = field(default=1, metadata={"min": 1, "max": 256})
    # The workspace's own code as the model's memory (model/project_memory.py).
    project_memory: bool = True
    # Gitignore-style patterns (relative to a workspace folder) kept out of that memory,
    # on top of .gitignore, secrets, vendor/ and generated files.
    exclude: tuple[str, ...] = ()
    # A suggestion (and, while streaming, each line) is shown only when its least likely
    # token is at least this probable; 0 shows everything. 0.4 was chosen on two unseen
    # Rails apps with project memory: 41-44 % of cases shown, 44-59 % of those exactly
    # right (README "Project memory and the confidence gate").
    min_confidence: float = field(default=0.4, metadata={"min": 0.0, "max": 1.0})
    # Per-project LoRA adapters trained in the background (lsp/personalization.py): when
    # at least this much code (KB of files touched) is new since the last run, not more
    # often than the interval, and only after this many seconds without typing.
    personalization: bool = True
    personalization_min_changed_kb: int = field(default=20, metadata={"min": 0, "max": 1_000_000})
    personalization_interval_hours: float = field(default=6.0, metadata={"min": 0.0, "max": 8760.0})
    personalization_idle_seconds: float = field(
        default=120.0, metadata={"min": 0.0, "max": 86400.0}
    )
    personalization_budget_minutes: float = field(
        default=8.0, metadata={"min": 0.01, "max": 1440.0}
    )
    # Suggestion events (shown, accepted, partly accepted, dismissed) appended to
    # <data dir>/events/events.jsonl for `rubytailor stats` (lsp/events.py); never the
    # suggested code unless events_include_text.
    events: bool = True
    events_include_text: bool = False
    # Evaluate the prompt where the cursor rests (clients send rubytailor/prewarm) while
    # the editor is idle, so the first suggestion there starts warm (lsp/prewarm.py).
    prewarm: bool = True

    @property
    def model_key(self) -> tuple[str, str, int | None]:
        """The settings whose change means the model must be reloaded."""
        return (self.backend, self.model_path, self.threads)


def snake_to_camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.capitalize() for word in rest)


def unwrap_section(options: Any) -> Mapping[str, Any] | None:
    """initializationOptions may be the settings object or ``{"rubytailor": {...}}``."""
    if not isinstance(options, Mapping):
        return None
    inner = options.get(SECTION)
    if isinstance(inner, Mapping):
        return inner
    return options


def merge_wire(*layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Overlay wire dictionaries left to right; nested objects merge, nulls are "unset"."""
    merged: dict[str, Any] = {}
    for layer in layers:
        if not layer:
            continue
        for key, value in layer.items():
            if value is None:
                continue
            if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
                merged[key] = merge_wire(merged[key], value)
            else:
                merged[key] = value
    return merged


T = TypeVar("T")


def settings_from_wire(data: Mapping[str, Any] | None) -> tuple[Settings, list[str]]:
    """The editor's settings and a list of problems to show the user (empty if none)."""
    problems: list[str] = []
    settings = structure(Settings, data or {}, problems, path=SECTION)
    return settings, problems


def structure(cls: type[T], data: Mapping[str, Any], problems: list[str], *, path: str) -> T:
    """Build dataclass ``cls`` from camelCase ``data``; bad fields fall back to defaults."""
    if not isinstance(data, Mapping):
        problems.append(f"{path}: expected an object, got {_describe(data)}; using defaults.")
        data = {}
    hints = typing.get_type_hints(cls)
    fields = {snake_to_camel(f.name): f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in fields:
            logger.info("ignoring unknown setting %s.%s", path, key)
    values: dict[str, Any] = {}
    for wire_name, f in fields.items():
        if wire_name not in data:
            continue
        where = f"{path}.{wire_name}"
        raw = data[wire_name]
        if raw is None or (f.metadata.get("blank_is_unset") and raw == ""):
            continue
        value, problem = _convert(hints[f.name], raw, f, where, problems)
        if problem:
            problems.append(f"{where}: {problem}; using the default {_default_text(f)}.")
        else:
            values[f.name] = value
    return cls(**values)


def _convert(
    hint: Any, raw: Any, f: dataclasses.Field[Any], where: str, problems: list[str]
) -> tuple[Any, str | None]:
    """(value, None) when ``raw`` fits ``hint`` and the field's rules, else (None, why)."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        # Only ``X | None`` is used; None was handled by the caller.
        (inner,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _convert(inner, raw, f, where, problems)
    if origin is Literal:
        choices = typing.get_args(hint)
        if raw in choices:
            return raw, None
        return None, f"{_json(raw)} is not one of {', '.join(_json(c) for c in choices)}"
    if dataclasses.is_dataclass(hint):
        return structure(hint, raw, problems, path=where), None  # type: ignore[arg-type]
    if hint is bool:
        if isinstance(raw, bool):
            return raw, None
        return None, f"expected true or false, got {_describe(raw)}"
    if hint is int:
        # JSON has one number type: accept 8.0 but not 8.5, and never a boolean.
        if isinstance(raw, float) and raw.is_integer():
            raw = int(raw)
        if not isinstance(raw, int) or isinstance(raw, bool):
            return None, f"expected a whole number, got {_describe(raw)}"
        low, high = f.metadata.get("min"), f.metadata.get("max")
        if (low is not None and raw < low) or (high is not None and raw > high):
            return None, f"{raw} is out of range ({low}-{high})"
        return raw, None
    if hint is float:
        if not isinstance(raw, int | float) or isinstance(raw, bool):
            return None, f"expected a number, got {_describe(raw)}"
        low, high = f.metadata.get("min"), f.metadata.get("max")
        if (low is not None and raw < low) or (high is not None and raw > high):
            return None, f"{raw} is out of range ({low}-{high})"
        return float(raw), None
    if origin is tuple:
        if isinstance(raw, list) and all(isinstance(item, str) for item in raw):
            return tuple(raw), None
        return None, f"expected an array of strings, got {_describe(raw)}"
    if hint is str:
        if isinstance(raw, str):
            return raw, None
        return None, f"expected a string, got {_describe(raw)}"
    raise TypeError(f"settings field type {hint!r} is not supported by the converter")


def _describe(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    name = names.get(type(value), "an array" if isinstance(value, list) else "an object")
    if isinstance(value, str | int | float) and len(_json(value)) <= 40:
        return f"{name} ({_json(value)})"
    return name


def _json(value: Any) -> str:
    """A value as the user wrote it in their JSON settings."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def _default_text(f: dataclasses.Field[Any]) -> str:
    if f.default is not dataclasses.MISSING:
        return _json(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return _json(f.default_factory())
    return "value"
