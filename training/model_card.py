"""The README.md model card of an exported model, from the facts the pipeline recorded.

Inputs: the model's rubytailor.json (architecture, tokens seen, time), the corpus
summary.json (data and licenses), the eval report JSON, and free text the caller
supplies (the commands that were run, the machine, notes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _num(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def results_table(report: dict[str, Any]) -> str:
    """Markdown tables of the eval report: one row per system and case kind."""
    rows = [
        "| cases | system | n | exact match | edit similarity | served EM | served ES "
        "| empty | Prism-valid (raw) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, systems in report.get("results", {}).items():
        for name, m in systems.items():
            rows.append(
                f"| {kind} | {name} | {m['cases']} | {_pct(m['exact_match'])} "
                f"| {_num(m['edit_similarity'])} | {_pct(m['served_exact_match'])} "
                f"| {_num(m['served_edit_similarity'])} | {_pct(m['empty_rate'])} "
                f"| {_pct(m['prism_valid_rate'])} |"
            )
    return "\n".join(rows)


def _report_section(title: str, report: dict[str, Any]) -> list[str]:
    """One eval report as a card section: results table, bits per byte, latency."""
    bpb = report.get("bits_per_byte", {})
    lat = report.get("latency_warm_single_line", {})
    return [
        f"## Evaluation: {title}",
        "",
        results_table(report),
        "",
        "Exact match ignores trailing whitespace; edit similarity is "
        "1 - Levenshtein / max(length) (`training/metrics.py`). *Served* is what remains "
        "after the Prism check the server applies; *Prism-valid* is the share of "
        "non-empty raw suggestions that add no syntax error.",
        "",
        "- Bits per byte on these files: " + ", ".join(f"{k} {v:.3f}" for k, v in bpb.items()),
        *(
            f"- Single-line latency with a warm prompt cache ({name} backend, this "
            f"machine): median {_num(m.get('median_ms'), 1)} ms, p90 "
            f"{_num(m.get('p90_ms'), 1)} ms, "
            f"{_num(m.get('median_ms_per_generated_token'), 1)} ms per generated token."
            for name, m in report.get(
                "latency_warm_single_line_by_backend", {"transformers": lat}
            ).items()
        ),
        "",
    ]


def write_model_card(
    model_dir: Path,
    *,
    corpus_summary: dict[str, Any],
    reports: list[tuple[str, dict[str, Any]]],
    commands: str,
    compute: str,
    notes: str,
) -> Path:
    meta = json.loads((model_dir / "rubytailor.json").read_text(encoding="utf-8"))
    trained = meta.get("trained", {})
    shape = trained.get("shape", {})
    splits = corpus_summary.get("splits", {})
    lines = [
        "# rubytailor-default",
        "",
        "A small Ruby code-completion model trained from scratch by rubytailor: "
        f"GPTBigCode ({trained.get('parameters', 0) / 1e6:.1f}M parameters), "
        f"{meta['fim_format']} FIM tokens, {meta['fim_order'].upper()} prompt order, "
        f"context {meta['context_length']} tokens. Weights in fp16 safetensors.",
        "",
        "## Architecture",
        "",
        f"- GPTBigCode, n_embd {shape.get('n_embd')}, n_layer {shape.get('n_layer')}, "
        f"n_head {shape.get('n_head')}, multi-head attention (`multi_query=False`, so the "
        "GGML starcoder loader accepts an export), tied input/output embeddings.",
        "- Tokenizer: byte-level BPE, 8,192 tokens, trained on the training split; special "
        "tokens `<|endoftext|>` `<fim_prefix>` `<fim_middle>` `<fim_suffix>` `<fim_pad>` "
        "`<file_sep>` (ids 0-5); `rubytailor_tokenizer_version` 1.",
        f"- FIM: {json.dumps(trained.get('fim', {}))}; examples built with "
        "`model/prompt.py:training_text`, the serving prompt builder.",
        "",
        "## Training data",
        "",
        f"- {corpus_summary.get('kept_files')} Ruby files, "
        f"{corpus_summary.get('kept_bytes', 0) / 1e6:.1f} MB, from "
        f"{len(corpus_summary.get('sources', {}))} Debian 12 packages "
        "(standard library `libruby3.1`, Rails 6.1 components, Sinatra, Rack, RSpec, dry-rb, "
        "RuboCop, Faraday, Grape, Devise, Jekyll, Puma, Sequel, rake, pry and other gems). "
        "Hanami, dry-monads, dry-schema, dry-validation and dry-struct are not packaged "
        "in Debian 12, so they are absent.",
        "- Split by package (SHA-256 of the package name), never by file: "
        + "; ".join(
            f"{name} {s.get('files')} files / {s.get('bytes', 0) / 1e6:.1f} MB"
            + (f" ({', '.join(s.get('sources', []))})" if name != "train" else "")
            for name, s in splits.items()
        )
        + ".",
        "- Licenses kept (per file, from Debian DEP-5 copyright files): "
        + ", ".join(f"{k} {v}" for k, v in corpus_summary.get("kept_licenses", {}).items())
        + ". Excluded as not permissive: "
        + ", ".join(f"{k} {v}" for k, v in corpus_summary.get("excluded_licenses", {}).items())
        + ".",
        "- Dropped: "
        + ", ".join(f"{k} {v}" for k, v in corpus_summary.get("dropped", {}).items())
        + ".",
        "- The per-file manifest (source package, path, license, SHA-256, split, kept or "
        "why dropped) is `data-manifest.jsonl.gz` beside this card.",
        "",
        "## Training compute",
        "",
        compute,
        "",
        f"- Steps {trained.get('steps')}, batch {trained.get('batch_size')} x "
        f"{trained.get('seq_len')} tokens, tokens seen {trained.get('tokens_seen', 0) / 1e6:.2f}M "
        f"(one epoch is {(trained.get('train_tokens_per_epoch') or 0) / 1e6:.2f}M tokens), "
        f"{trained.get('train_minutes')} minutes, peak lr {trained.get('lr')}, AdamW, "
        "warmup then cosine decay.",
        "",
    ]
    for title, report in reports:
        lines += _report_section(title, report)
    lines += ["## Notes and limits", "", notes, "", "## How it was made", "", commands, ""]
    path = model_dir / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def bundle_manifest(corpus_dir: Path, model_dir: Path) -> Path:
    """Copy the corpus manifest, gzipped, next to the model card."""
    import gzip

    out = model_dir / "data-manifest.jsonl.gz"
    data = (corpus_dir / "manifest.jsonl").read_bytes()
    with gzip.GzipFile(out, "wb", compresslevel=9, mtime=0) as fh:
        fh.write(data)
    out.chmod(0o644)
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m rubytailor.training.model_card --model DIR --corpus DIR ...`."""
    import argparse

    p = argparse.ArgumentParser(prog="rubytailor model card")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--corpus", type=Path, required=True, help="corpus the model was trained on")
    p.add_argument(
        "--report",
        action="append",
        default=[],
        metavar="TITLE=PATH",
        help="a section title and the JSON report of `rubytailor eval` (repeatable)",
    )
    p.add_argument("--compute", type=Path, required=True, help="markdown: machine and time")
    p.add_argument("--notes", type=Path, required=True, help="markdown: limits and notes")
    p.add_argument("--commands", type=Path, required=True, help="markdown: commands run")
    args = p.parse_args(argv)
    summary = json.loads((args.corpus / "summary.json").read_text(encoding="utf-8"))
    reports = []
    for item in args.report:
        title, sep, path = item.rpartition("=")
        if not sep or not title:
            p.error(f"--report wants TITLE=PATH, not {item!r}")
        reports.append((title, json.loads(Path(path).read_text(encoding="utf-8"))))
    bundle_manifest(args.corpus, args.model)
    write_model_card(
        args.model,
        corpus_summary=summary,
        reports=reports,
        commands=args.commands.read_text(encoding="utf-8").strip(),
        compute=args.compute.read_text(encoding="utf-8").strip(),
        notes=args.notes.read_text(encoding="utf-8").strip(),
    )
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
