"""Importing a folder of applications with a manifest: licence, SHA-256, held-out apps, split."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from rubytailor.errors import RubytailorError
from rubytailor.training.app_corpus import app_sources, read_held_out, repo_of_folder
from rubytailor.training.cli_data import main
from rubytailor.training.corpus import build_corpus, directory_source
from rubytailor.training.split import split_for


def _name_in(split: str, prefix: str) -> str:
    return next(n for n in (f"{prefix}/app{i}" for i in range(10_000)) if split_for(n) == split)


TRAIN_APP = _name_in("train", "acme")
TEST_APP = _name_in("test", "acme")
HELD_APP = "evalco/casa"


def _model(name: str, n: int) -> str:
    return (
        f"class {name} < ApplicationRecord\n"
        f"  belongs_to :account\n"
        + "".join(
            f"  def field_{i}_{name.lower()}\n    self[:f{i}] * {n + i}\n  end\n\n"
            for i in range(6)
        )
        + "end\n"
    )


def _write_apps(tmp: Path) -> tuple[Path, Path]:
    """Three apps (one to hold out), their manifest, and a README marking the held-out one."""
    apps = tmp / "apps"
    files = {
        TRAIN_APP: {"app/models/order.rb": _model("Order", 1), "Gemfile": 'gem "rails"\n'},
        TEST_APP: {"app/models/invoice.rb": _model("Invoice", 2), "config.ru": "run App\n"},
        HELD_APP: {"app/models/volunteer.rb": _model("Volunteer", 3)},
    }
    # A copy of the held-out app's file inside a training app: must not leak into training.
    files[TRAIN_APP]["app/models/copied.rb"] = files[HELD_APP]["app/models/volunteer.rb"]
    rows = []
    for repo, contents in files.items():
        for rel, text in contents.items():
            path = apps / repo.replace("/", "__") / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            lic = "Apache-2.0" if repo == TEST_APP else "MIT"
            rows.append(
                {
                    "repo": repo,
                    "commit": "c0ffee" + repo[-1],
                    "path": rel,
                    "license": lic,
                    "sha256": hashlib.sha256(text.encode()).hexdigest(),
                    "bytes": len(text),
                }
            )
    manifest = tmp / "data" / "apps-manifest.jsonl"
    manifest.parent.mkdir()
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp / "data" / "apps-README.md").write_text(
        "# Apps\n\n## Held out for evaluation\n\n| repository | why |\n|---|---|\n"
        f"| {HELD_APP} | a test |\n\n## Layout\n\n| {TRAIN_APP} | not held out |\n"
    )
    return apps, manifest


def _manifest(corpus: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (corpus / "manifest.jsonl").read_text().splitlines()]


def _split_rows(corpus: Path) -> dict[str, list[dict[str, str]]]:
    return {
        split: [json.loads(x) for x in (corpus / f"{split}.jsonl").read_text().splitlines()]
        for split in ("train", "validation", "test")
    }


def test_readme_held_out_section_and_folder_names(tmp_path: Path) -> None:
    _, manifest = _write_apps(tmp_path)
    assert read_held_out(manifest.with_name("apps-README.md")) == [HELD_APP]
    plain = tmp_path / "held.txt"
    plain.write_text("# eval apps\nowner/one\n\nowner/two  # comment\n")
    assert read_held_out(plain) == ["owner/one", "owner/two"]
    assert repo_of_folder("rubyforgood__casa") == "rubyforgood/casa"
    assert repo_of_folder("myapp") == "myapp"


def test_cli_import_carries_licence_and_holds_out_by_readme(tmp_path: Path) -> None:
    apps, manifest = _write_apps(tmp_path)
    corpus = tmp_path / "corpus"
    argv = ["corpus", "--out", str(corpus), "--no-debian", "--no-prism"]
    assert main([*argv, "--apps", str(apps), "--apps-manifest", str(manifest)]) == 0
    records = _manifest(corpus)
    by_path = {(r["source"], r["path"]): r for r in records}
    invoice = by_path[(TEST_APP, "app/models/invoice.rb")]
    assert invoice["license"] == "Apache-2.0" and invoice["kept"]
    assert invoice["commit"] == "c0ffee" + TEST_APP[-1]
    assert invoice["source_kind"] == "app"

    # The held-out app is recorded, in no split, and its copy elsewhere is dropped too.
    held = by_path[(HELD_APP, "app/models/volunteer.rb")]
    assert (held["kept"], held["reason"], held["split"]) == (False, "held_out", "held_out")
    copied = by_path[(TRAIN_APP, "app/models/copied.rb")]
    assert (copied["kept"], copied["reason"]) == (False, "held_out_duplicate")
    rows = _split_rows(corpus)
    assert all(r["source"] != HELD_APP for split in rows.values() for r in split)
    assert all("Volunteer" not in r["text"] for split in rows.values() for r in split)
    summary = json.loads((corpus / "summary.json").read_text())
    assert summary["held_out"] == [HELD_APP]
    assert summary["kinds"]["app"]["test"]["files"] == 2


def test_split_is_by_app(tmp_path: Path) -> None:
    apps, manifest = _write_apps(tmp_path)
    corpus = tmp_path / "corpus"
    sources = app_sources(apps, manifest=manifest, held_out=frozenset({HELD_APP}))
    build_corpus(sources, corpus)
    rows = _split_rows(corpus)
    assert {r["source"] for r in rows["train"]} == {TRAIN_APP}
    assert {r["source"] for r in rows["test"]} == {TEST_APP}
    for rec in _manifest(corpus):
        if rec["kept"]:
            assert rec["split"] == split_for(str(rec["source"]))


def test_sha_mismatch_and_missing_files_are_rejected(tmp_path: Path) -> None:
    apps, manifest = _write_apps(tmp_path)
    (apps / TRAIN_APP.replace("/", "__") / "Gemfile").write_text('gem "evil"\n')
    (apps / TEST_APP.replace("/", "__") / "config.ru").unlink()
    corpus = tmp_path / "corpus"
    build_corpus(app_sources(apps, manifest=manifest, held_out=frozenset({HELD_APP})), corpus)
    by_path = {(r["source"], r["path"]): r for r in _manifest(corpus)}
    assert by_path[(TRAIN_APP, "Gemfile")]["reason"] == "sha_mismatch"
    assert by_path[(TEST_APP, "config.ru")]["reason"] == "missing"
    texts = [r["text"] for split in _split_rows(corpus).values() for r in split]
    assert not any("evil" in t for t in texts)


def test_apps_deduplicate_against_libraries_and_libraries_win(tmp_path: Path) -> None:
    apps, manifest = _write_apps(tmp_path)
    lib = tmp_path / "lib_src" / "zzlib"
    lib.mkdir(parents=True)
    (lib / "order.rb").write_text(_model("Order", 1))  # same as the train app's order.rb
    corpus = tmp_path / "corpus"
    sources = [directory_source(lib, "MIT")]
    sources += app_sources(apps, manifest=manifest, held_out=frozenset({HELD_APP}))
    build_corpus(sources, corpus)
    by_path = {(r["source"], r["path"]): r for r in _manifest(corpus)}
    assert by_path[("zzlib", "order.rb")]["kept"]
    app_copy = by_path[(TRAIN_APP, "app/models/order.rb")]
    assert (app_copy["reason"], app_copy["duplicate_of"]) == ("duplicate", "zzlib:order.rb")


def test_held_out_eval_corpus_and_unknown_hold_out(tmp_path: Path) -> None:
    apps, manifest = _write_apps(tmp_path)
    corpus = tmp_path / "eval"
    argv = ["corpus", "--out", str(corpus), "--no-debian", "--no-prism", "--apps", str(apps)]
    assert main([*argv, "--apps-manifest", str(manifest), "--held-out-eval"]) == 0
    rows = _split_rows(corpus)
    assert not rows["train"] and not rows["validation"]
    assert {r["source"] for r in rows["test"]} == {HELD_APP}
    with pytest.raises(RubytailorError, match="not among the apps"):
        app_sources(apps, manifest=manifest, held_out=frozenset({"evalco/typo"}))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"repo": "a/b", "path": "../../etc/passwd", "sha256": "0"}) + "\n")
    with pytest.raises(RubytailorError, match="outside the app"):
        app_sources(apps, manifest=bad)


def test_apps_without_manifest_read_the_licence_file(tmp_path: Path) -> None:
    apps = tmp_path / "mine"
    app = apps / "shop"
    (app / "app" / "models").mkdir(parents=True)
    (app / "app" / "models" / "cart.rb").write_text(_model("Cart", 4))
    (app / "LICENSE").write_text("Permission is hereby granted, free of charge, to any person\n")
    sources = app_sources(apps)
    assert [(s.name, s.license, s.files) for s in sources] == [("shop", "MIT", None)]
    build_corpus(sources, tmp_path / "corpus")
    rec = _manifest(tmp_path / "corpus")[0]
    assert (rec["path"], rec["license"], rec["kept"]) == ("app/models/cart.rb", "MIT", True)
