"""Settings from the wire: defaults, validation with per-field fallback, layering."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from rubytailor import paths
from rubytailor.config import (
    Settings,
    merge_wire,
    settings_from_wire,
    structure,
    unwrap_section,
)


def test_empty_settings_are_the_documented_defaults() -> None:
    settings, problems = settings_from_wire({})
    assert problems == []
    assert settings == Settings()
    assert settings.enable is True
    assert settings.backend == "auto"
    assert settings.model_path == str(paths.default_model_dir())
    assert (settings.max_lines, settings.max_tokens, settings.max_prompt_tokens) == (8, 64, 512)
    assert settings.max_file_bytes == 1_000_000
    assert settings.diagnostics is True
    assert settings.threads == 1


def test_camel_case_keys_set_fields() -> None:
    settings, problems = settings_from_wire(
        {
            "enable": False,
            "backend": "fake",
            "modelPath": "/tmp/script.json",
            "maxLines": 3,
            "maxTokens": 100,
            "maxPromptTokens": 512,
            "maxFileBytes": 5000,
            "diagnostics": False,
            "threads": 2,
        }
    )
    assert problems == []
    assert settings == Settings(
        enable=False,
        backend="fake",
        model_path="/tmp/script.json",
        max_lines=3,
        max_tokens=100,
        max_prompt_tokens=512,
        max_file_bytes=5000,
        diagnostics=False,
        threads=2,
    )


@pytest.mark.parametrize(
    ("wire", "field_name", "words"),
    [
        ({"maxLines": 0}, "maxLines", "out of range (1-50)"),
        ({"maxLines": 51}, "maxLines", "out of range (1-50)"),
        ({"maxLines": "8"}, "maxLines", "expected a whole number"),
        ({"maxLines": 2.5}, "maxLines", "expected a whole number"),
        ({"maxTokens": True}, "maxTokens", "expected a whole number"),
        ({"maxTokens": 513}, "maxTokens", "out of range (1-512)"),
        (
            {"backend": "ctransformers2"},
            "backend",
            'is not one of "auto", "llamacpp", "ctransformers"',
        ),
        ({"enable": "yes"}, "enable", "expected true or false"),
        ({"diagnostics": 1}, "diagnostics", "expected true or false"),
        ({"modelPath": 42}, "modelPath", "expected a string"),
        ({"threads": 0}, "threads", "out of range"),
    ],
)
def test_an_invalid_value_is_reported_and_only_that_field_falls_back(
    wire: dict, field_name: str, words: str
) -> None:
    settings, problems = settings_from_wire({**wire, "maxFileBytes": 1234})
    assert len(problems) == 1
    assert problems[0].startswith(f"rubytailor.{field_name}: ")
    assert words in problems[0]
    assert "using the default" in problems[0]
    # The bad field has its default, the good one next to it is kept.
    assert settings.max_file_bytes == 1234
    default = Settings()
    assert settings == Settings(
        **{**default.__dict__, "max_file_bytes": 1234}  # type: ignore[arg-type]
    )


def test_whole_floats_are_accepted_as_integers() -> None:
    settings, problems = settings_from_wire({"maxLines": 4.0})
    assert problems == [] and settings.max_lines == 4


def test_null_and_blank_model_path_mean_unset() -> None:
    settings, problems = settings_from_wire({"modelPath": "", "threads": None, "maxLines": None})
    assert problems == []
    assert settings == Settings()


def test_unknown_keys_are_ignored_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="rubytailor.config"):
        settings, problems = settings_from_wire({"maxLines": 2, "colour": "blue"})
    assert problems == [] and settings.max_lines == 2
    assert "rubytailor.colour" in caplog.text


def test_a_non_object_is_a_problem_not_a_crash() -> None:
    settings, problems = settings_from_wire(["maxLines", 3])  # type: ignore[arg-type]
    assert settings == Settings()
    assert problems == ["rubytailor: expected an object, got an array; using defaults."]


@pytest.mark.parametrize(
    "options",
    [{"maxLines": 3}, {"rubytailor": {"maxLines": 3}}],
    ids=["settings-object", "wrapped-in-section"],
)
def test_initialization_options_in_either_shape(options: dict) -> None:
    settings, _ = settings_from_wire(unwrap_section(options))
    assert settings.max_lines == 3


def test_layers_merge_later_wins_and_nulls_do_not_mask() -> None:
    cli = {"backend": "fake", "modelPath": "/cli/script.json"}
    init = {"maxLines": 2, "modelPath": None}
    client = {"maxLines": 5, "backend": None}
    settings, problems = settings_from_wire(merge_wire(cli, init, client))
    assert problems == []
    assert (settings.backend, settings.model_path, settings.max_lines) == (
        "fake",
        "/cli/script.json",
        5,
    )


@dataclass(frozen=True, kw_only=True)
class _Inner:
    depth: int = field(default=2, metadata={"min": 1, "max": 9})


@dataclass(frozen=True, kw_only=True)
class _Outer:
    name: str = "x"
    inner_part: _Inner = field(default_factory=_Inner)


def test_nested_sections_convert_recursively_with_dotted_problem_paths() -> None:
    problems: list[str] = []
    outer = structure(_Outer, {"name": "y", "innerPart": {"depth": 12}}, problems, path="s")
    assert outer == _Outer(name="y", inner_part=_Inner())
    assert problems == ["s.innerPart.depth: 12 is out of range (1-9); using the default 2."]
    problems.clear()
    outer = structure(_Outer, {"innerPart": {"depth": 4}}, problems, path="s")
    assert outer.inner_part.depth == 4 and problems == []


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Settings().max_lines = 3  # type: ignore[misc]


def test_project_memory_settings_and_their_checks() -> None:
    settings, problems = settings_from_wire(
        {"projectMemory": False, "exclude": ["spec/fixtures/", "*.gen.rb"], "minConfidence": 0}
    )
    assert problems == []
    assert settings.project_memory is False
    assert settings.exclude == ("spec/fixtures/", "*.gen.rb")
    assert settings.min_confidence == 0.0
    defaults = Settings()
    assert (defaults.project_memory, defaults.exclude, defaults.min_confidence) == (True, (), 0.4)
    settings, problems = settings_from_wire(
        {"exclude": "spec/", "minConfidence": 1.5, "projectMemory": "yes"}
    )
    assert settings == Settings()
    assert len(problems) == 3
    assert any("exclude" in p and "array of strings" in p for p in problems)
    assert any("minConfidence" in p and "out of range" in p for p in problems)
