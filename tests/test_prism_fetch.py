"""scripts/fetch_prism.sh: pinned download of prism.wasm, offline (npm is faked or absent)."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from rubytailor.paths import REPO_ROOT, prism_wasm_path
from rubytailor.prism import PRISM_VERSION, PRISM_WASM_SHA256

SCRIPT = REPO_ROOT / "scripts" / "fetch_prism.sh"
# What the script needs besides npm; linked into a private bin directory so that the
# real npm (if any) is out of reach.
TOOLS = ["bash", "cat", "cp", "cut", "dirname", "find", "head", "mkdir", "mktemp", "mv", "rm"]
TOOLS += ["sha256sum", "tail", "tar", "gzip"]


@pytest.fixture(scope="module")
def real_wasm() -> bytes:
    if not prism_wasm_path().is_file():
        pytest.skip(f"prism.wasm not fetched at {prism_wasm_path()}: run `make setup`")
    return prism_wasm_path().read_bytes()


def bin_dir(tmp_path: Path, fake_npm_package: bytes | None = None) -> Path:
    """A PATH directory with the basic tools and, if given, an npm that 'packs' this wasm."""
    bin_path = tmp_path / "bin"
    bin_path.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found, f"{tool} is needed to run fetch_prism.sh"
        (bin_path / tool).symlink_to(found)
    if fake_npm_package is not None:
        tarball = tmp_path / "ruby-prism-fake.tgz"
        with tarfile.open(tarball, "w:gz") as archive:
            info = tarfile.TarInfo("package/src/prism.wasm")
            info.size = len(fake_npm_package)
            archive.addfile(info, io.BytesIO(fake_npm_package))
        log = tmp_path / "npm-calls.log"
        npm = bin_path / "npm"
        npm.write_text(
            f'#!/bin/sh\necho "$@" >> "{log}"\ncp "{tarball}" ruby-prism-fake.tgz\n'
            "echo ruby-prism-fake.tgz\n"
        )
        npm.chmod(0o755)
    return bin_path


def run_script(dest: Path, bin_path: Path) -> subprocess.CompletedProcess[str]:
    scratch = bin_path.parent
    env = {"PATH": str(bin_path), "HOME": str(scratch), "TMPDIR": str(scratch)}
    return subprocess.run(
        [str(bin_path / "bash"), str(SCRIPT), str(dest)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_script_and_bridge_pin_the_same_release() -> None:
    script = SCRIPT.read_text()
    assert f'PRISM_WASM_SHA256="{PRISM_WASM_SHA256}"' in script
    version = re.search(r'PRISM_VERSION="([0-9.]+)"', script)
    assert version and version.group(1) == ".".join(map(str, PRISM_VERSION))


def test_the_fetched_file_matches_the_pin(real_wasm: bytes) -> None:
    assert hashlib.sha256(real_wasm).hexdigest() == PRISM_WASM_SHA256


def test_fetch_installs_the_wasm_and_its_license(tmp_path: Path, real_wasm: bytes) -> None:
    dest = tmp_path / "vendor" / "prism"
    result = run_script(dest, bin_dir(tmp_path, real_wasm))
    assert result.returncode == 0, result.stderr
    assert (dest / "prism.wasm").read_bytes() == real_wasm
    assert "MIT" in (dest / "LICENSE.txt").read_text()
    calls = (tmp_path / "npm-calls.log").read_text()
    assert "@ruby/prism@1.9.0" in calls


def test_second_run_does_nothing_even_without_npm(tmp_path: Path, real_wasm: bytes) -> None:
    dest = tmp_path / "vendor" / "prism"
    dest.mkdir(parents=True)
    (dest / "prism.wasm").write_bytes(real_wasm)
    result = run_script(dest, bin_dir(tmp_path))  # no npm on PATH at all
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout
    assert (dest / "prism.wasm").read_bytes() == real_wasm
    assert (dest / "LICENSE.txt").is_file()


def test_missing_npm_is_a_clear_error(tmp_path: Path) -> None:
    dest = tmp_path / "vendor" / "prism"
    result = run_script(dest, bin_dir(tmp_path))
    assert result.returncode != 0
    assert "npm is not installed" in result.stderr
    assert not (dest / "prism.wasm").exists()


def test_a_package_with_the_wrong_hash_is_not_installed(tmp_path: Path) -> None:
    dest = tmp_path / "vendor" / "prism"
    dest.mkdir(parents=True)
    (dest / "prism.wasm").write_bytes(b"stale")  # wrong hash: the script must re-fetch
    result = run_script(dest, bin_dir(tmp_path, b"\0asm not the pinned build"))
    assert result.returncode != 0
    assert PRISM_WASM_SHA256 in result.stderr and "refusing" in result.stderr
    assert (dest / "prism.wasm").read_bytes() == b"stale"
    assert not [p for p in os.listdir(dest) if p.startswith("prism.wasm.tmp")]
