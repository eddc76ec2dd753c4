"""Measure the project memory on real Rails apps: build time, memory, lookup latency.

    .venv/bin/python scripts/bench_project_memory.py            # the five held-out apps

Unpacks the apps from the Rails archive (once, into --apps-dir), tokenizes their .rb
files with the bundled tokenizer, then reports for one app and for all of them together
(about 5.6 MB of Ruby): build time (median of --repeats), bytes per token, RSS added
after the build and the peak while building, single-file update and merge times, and the
per-call latency of ``ProjectMemory.lookup`` as the token loop would call it (the open
file excluded from the workspace and given as the document, the context growing by the
file's true next tokens), in wall time and in thread CPU time (on a shared machine the
wall-time tail is mostly other processes' time slices). Single-threaded.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import gc  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from rubytailor.model.project_memory import DocumentSource, ProjectMemory, WorkspaceIndex  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ARCHIVE = Path("/work/shared/data/rails-apps.tar.zst")
HELD_OUT = [
    "rubyforgood__casa",
    "codebar__planner",
    "errbit__errbit",
    "feedbin__feedbin",
    "postalserver__postal",
]


def proc_status(field: str) -> int:
    """A /proc/self/status figure (VmRSS, VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs); False if not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def load_apps(apps_dir: Path, names: list[str]) -> dict[str, dict[str, str]]:
    missing = [n for n in names if not (apps_dir / n).is_dir()]
    if missing:
        apps_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["tar", "--zstd", "-xf", str(ARCHIVE), "-C", str(apps_dir), *missing], check=True
        )
    return {
        name: {
            str(p.relative_to(apps_dir)): p.read_text(errors="replace")
            for p in sorted((apps_dir / name).rglob("*.rb"))
        }
        for name in names
    }


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def bench_build(
    files: dict[str, np.ndarray], repeats: int
) -> tuple[WorkspaceIndex, dict[str, float]]:
    gc.collect()
    rss_before = proc_status("VmRSS")
    peak_known = reset_peak_rss()
    began = time.perf_counter()
    index = WorkspaceIndex(background_merge=False)
    index.update_many(files)
    times = [time.perf_counter() - began]
    gc.collect()
    figures = {
        "rss_added_mb": (proc_status("VmRSS") - rss_before) / 1e6,
        "peak_added_mb": (proc_status("VmHWM") - rss_before) / 1e6 if peak_known else float("nan"),
    }
    for _ in range(repeats - 1):
        began = time.perf_counter()
        WorkspaceIndex(background_merge=False).update_many(files)
        times.append(time.perf_counter() - began)
    stats = index.stats()
    figures |= {
        "build_s": statistics.median(times),
        "tokens": stats.tokens,
        "files": stats.files,
        "bytes_per_token": stats.bytes / stats.tokens,
    }
    return index, figures


def bench_updates(
    index: WorkspaceIndex, files: dict[str, np.ndarray], rng: random.Random
) -> dict[str, float]:
    """Single-file updates (a small segment each) until one merge, then a full compaction."""
    keys = list(files)
    update_s = []
    for _ in range(20):
        key = rng.choice(keys)
        ids = files[key].copy()
        ids[rng.randrange(len(ids))] = rng.randrange(8000)  # an edit
        began = time.perf_counter()
        index.update(key, ids)  # merges the small segments inline when they pile up
        update_s.append(time.perf_counter() - began)
    began = time.perf_counter()
    index.compact()
    return {
        "update_ms_p50": pct(update_s, 50) * 1e3,
        "update_ms_max": max(update_s) * 1e3,
        "compact_s": time.perf_counter() - began,
    }


def bench_lookups(
    index: WorkspaceIndex, files: dict[str, np.ndarray], rng: random.Random, calls: int
) -> dict[str, float]:
    """Per-call latency as in generation: cursor somewhere in a file, 16 tokens generated."""
    memory = ProjectMemory(index)
    keys = [k for k in files if len(files[k]) > 64]
    per_call: list[float] = []
    cpu: list[float] = []  # thread CPU time: wall time less preemption by other processes
    workspace_only: list[float] = []
    hits = top1 = 0
    while len(per_call) < calls:
        key = rng.choice(keys)
        ids = files[key]
        cursor = rng.randrange(32, len(ids) - 16)
        doc = DocumentSource(ids[:cursor], ids[cursor:])
        context = ids[:cursor].tolist()
        for step in range(16):
            began, began_cpu = time.perf_counter(), time.thread_time()
            matches = memory.lookup(context, exclude_key=key, document=doc)
            per_call.append(time.perf_counter() - began)
            cpu.append(time.thread_time() - began_cpu)
            began = time.perf_counter()
            index.longest_match(context, exclude=key)
            workspace_only.append(time.perf_counter() - began)
            truth = int(ids[cursor + step])
            if matches:
                hits += 1
                best = max(matches, key=lambda m: m.n)
                top1 += int(best.next_ids[np.argmax(best.counts)]) == truth
            context.append(truth)
    return {
        "lookup_us_p50": pct(per_call, 50) * 1e6,
        "lookup_us_p95": pct(per_call, 95) * 1e6,
        "lookup_us_p99": pct(per_call, 99) * 1e6,
        "lookup_us_max": max(per_call) * 1e6,
        "cpu_us_p50": pct(cpu, 50) * 1e6,
        "cpu_us_p95": pct(cpu, 95) * 1e6,
        "cpu_us_p99": pct(cpu, 99) * 1e6,
        "cpu_us_max": max(cpu) * 1e6,
        "workspace_us_p50": pct(workspace_only, 50) * 1e6,
        "workspace_us_p95": pct(workspace_only, 95) * 1e6,
        "steps_with_match": hits / len(per_call),
        "longest_match_top1": top1 / len(per_call),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--apps-dir", type=Path, default=Path("/tmp/rubytailor-bench-apps"))
    parser.add_argument("--apps", nargs="+", default=HELD_OUT)
    parser.add_argument(
        "--tokenizer", type=Path, default=ROOT / "models/rubytailor-default/tokenizer.json"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calls", type=int, default=4000)
    args = parser.parse_args()

    apps = load_apps(args.apps_dir, args.apps)
    tokenizer = Tokenizer.from_file(str(args.tokenizer))
    began = time.perf_counter()
    tokens = {
        name: {k: np.asarray(tokenizer.encode(t).ids, dtype=np.int64) for k, t in texts.items()}
        for name, texts in apps.items()
    }
    print(f"tokenized {sum(map(len, apps.values()))} files in {time.perf_counter() - began:.1f} s")

    sets = {args.apps[0]: tokens[args.apps[0]]}
    if len(args.apps) > 1:
        sets[f"all {len(args.apps)} apps"] = {
            k: v for app in tokens.values() for k, v in app.items()
        }
    for label, files in sets.items():
        text_mb = sum(len(apps[k.split("/")[0]][k].encode()) for k in files) / 1e6
        rng = random.Random(0)
        index, build = bench_build(files, args.repeats)
        lookups = bench_lookups(index, files, rng, args.calls)
        updates = bench_updates(index, files, rng)
        print(f"\n{label}: {build['files']} files, {text_mb:.1f} MB, {build['tokens']:,} tokens")
        print(f"  build {build['build_s']:.2f} s, {build['bytes_per_token']:.1f} bytes/token")
        print(
            f"  RSS +{build['rss_added_mb']:.1f} MB after the build, "
            f"+{build['peak_added_mb']:.1f} MB at its peak"
        )
        print(
            f"  lookup per call (workspace + document): p50 {lookups['lookup_us_p50']:.0f} us, "
            f"p95 {lookups['lookup_us_p95']:.0f} us, p99 {lookups['lookup_us_p99']:.0f} us, "
            f"max {lookups['lookup_us_max']:.0f} us"
        )
        print(
            f"  the same in thread CPU time: p50 {lookups['cpu_us_p50']:.0f} us, "
            f"p95 {lookups['cpu_us_p95']:.0f} us, p99 {lookups['cpu_us_p99']:.0f} us, "
            f"max {lookups['cpu_us_max']:.0f} us"
        )
        print(
            f"  workspace alone: p50 {lookups['workspace_us_p50']:.0f} us, "
            f"p95 {lookups['workspace_us_p95']:.0f} us"
        )
        print(
            f"  steps with a match {lookups['steps_with_match']:.0%}; the longest match's top "
            f"token is the true next token in {lookups['longest_match_top1']:.0%} of steps"
        )
        print(
            f"  single-file update p50 {updates['update_ms_p50']:.1f} ms "
            f"(max {updates['update_ms_max']:.0f} ms, with merges); "
            f"full compaction {updates['compact_s']:.2f} s"
        )
        del index
        gc.collect()


if __name__ == "__main__":
    main()
