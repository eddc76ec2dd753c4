"""Export a training run as a servable model directory (Hugging Face format, fp16).

Writes config.json, model.safetensors (fp16), tokenizer.json + tokenizer_config.json and
rubytailor.json (FIM format, prompt order, context length, how it was trained). The
README model card is written separately (``training/model_card.py``).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rubytailor.errors import ModelError
from rubytailor.model.backends import ModelMetadata
from rubytailor.training.trainer import load_trained_model

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def export_run(
    run_dir: Path,
    out_dir: Path,
    *,
    tokenizer_dir: Path | None = None,
    fim_format: str = "starcoder",
    fim_order: str = "spm",
    dtype: torch.dtype = torch.float16,
) -> dict[str, Any]:
    """Write the run's last checkpoint to ``out_dir``; returns the ``trained`` record."""
    if not (run_dir / "checkpoint.pt").is_file():
        raise ModelError(f"no checkpoint in {run_dir}; train first with `rubytailor train`.")
    tokenizer_dir = tokenizer_dir or run_dir / "tokenizer"
    if not (tokenizer_dir / "tokenizer.json").is_file():
        raise ModelError(f"no tokenizer.json in {tokenizer_dir}; pass --tokenizer.")
    model, state = load_trained_model(run_dir)
    run_config = json.loads((run_dir / "run_config.json").read_text(encoding="utf-8"))
    tc = run_config["train_config"]
    data_meta_path = Path(tc["data_dir"]) / "train.json"
    data_meta = json.loads(data_meta_path.read_text()) if data_meta_path.is_file() else {}
    trained = {
        "architecture": model.config.model_type,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "shape": tc["shape"],
        "seq_len": tc["seq_len"],
        "steps": state["step"],
        "tokens_seen": state["tokens_seen"],
        "train_minutes": round(state["elapsed_s"] / 60, 1),
        "batch_size": tc["batch_size"],
        "lr": tc["lr"],
        "lora_r": tc["lora_r"],
        "init_from": tc["init_from"],
        "fim": data_meta.get("fim", {}),
        "train_tokens_per_epoch": data_meta.get("tokens"),
        "torch": run_config.get("torch"),
    }
    metadata = ModelMetadata(
        fim_format=fim_format,
        fim_order=fim_order,
        context_length=int(getattr(model.config, "n_positions", tc["seq_len"])),
        trained=trained,
    )
    export_model(model, out_dir, tokenizer_dir=tokenizer_dir, metadata=metadata, dtype=dtype)
    log.info("exported step %d of %s to %s", state["step"], run_dir, out_dir)
    return trained


def export_model(
    model: PreTrainedModel,
    out_dir: Path,
    *,
    tokenizer_dir: Path,
    metadata: ModelMetadata,
    dtype: torch.dtype = torch.float16,
) -> None:
    """Write ``model`` (converted to ``dtype`` in place), the tokenizer files of
    ``tokenizer_dir`` and ``metadata`` into ``out_dir``.

    ``export_run``'s writing half; public so a model that never went through a run (the
    untrained tiny test model) gets exactly the same kind of directory.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    # In place; transformers' own ``to`` is mistyped (its decorator hides ``self``).
    torch.nn.Module.to(model, dtype)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    # safetensors writes 0600; a committed model must be readable by everyone.
    for path in out_dir.iterdir():
        if path.is_file():
            path.chmod(0o644)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, out_dir / name)
    metadata.write(out_dir)


def directory_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
