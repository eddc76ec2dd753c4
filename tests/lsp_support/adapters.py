"""Personalization adapters for tests: real peft LoRA weights (random, not trained), in a
project's registry, made the way the trainer makes them (adapter/ + merged/)."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from rubytailor.model.backends import ADAPTER_DIR, MERGED_DIR, ModelMetadata
from rubytailor.model.backends.model_dir import model_id
from rubytailor.personalization.registry import AdapterRegistry, AdapterVersion
from rubytailor.personalization.state import ProjectState
from rubytailor.training.export import export_model


def commit_random_adapter(model_dir: Path, project: Path, *, seed: int = 0) -> AdapterVersion:
    """A committed (not promoted) adapter version whose weights change the model's output."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True).float()
    config = LoraConfig(r=4, lora_alpha=64, target_modules="all-linear", init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    registry = AdapterRegistry(ProjectState.for_project(project))
    with registry.staging() as staging:
        peft_model.save_pretrained(str(staging / ADAPTER_DIR))
        merged = peft_model.merge_and_unload()
        metadata = ModelMetadata.read(model_dir)
        assert metadata is not None
        export_model(merged, staging / MERGED_DIR, tokenizer_dir=model_dir, metadata=metadata)
        return registry.commit(staging, {"adapter_of": model_id(model_dir)})
