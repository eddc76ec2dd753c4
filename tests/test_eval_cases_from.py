"""`rubytailor eval --project P --cases-from SUB...`: cases from some folders, memory from all."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from rubytailor.errors import RubytailorError
from rubytailor.training.cli_eval import _case_files, load_files


def _project(root: Path) -> Path:
    for rel in ("app/models/user.rb", "app/helpers/users_helper.rb", "lib/tasks/x.rb", "db/m.rb"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"# {rel}\nclass A\nend\n")
    return root


def test_cases_come_from_the_named_folders_only(tmp_path: Path) -> None:
    project = _project(tmp_path / "app-project")
    args = argparse.Namespace(
        corpus=None, dir=None, project=project, cases_from=["app/models", "app/helpers"]
    )
    files = load_files(args)
    assert len(files) == 4  # the memory's files: the whole project
    names = sorted(
        Path(name).relative_to(project.resolve()).as_posix() for name, _ in _case_files(args, files)
    )
    assert names == ["app/helpers/users_helper.rb", "app/models/user.rb"]
    args.cases_from = None
    assert _case_files(args, files) == files


def test_cases_from_needs_a_project(tmp_path: Path) -> None:
    args = argparse.Namespace(corpus=None, dir=tmp_path, project=None, cases_from=["app"])
    with pytest.raises(RubytailorError, match="--project"):
        _case_files(args, [("a.rb", "x = 1\n")])
