"""Tiny models for tests and demos, built in seconds by the real training pipeline.

``build_tiny_model`` runs the default model's steps at toy size on a handful of Ruby files:
``tokenizer`` (byte-level BPE, StarCoder special tokens at ids 0-5), ``prepare`` (FIM
examples made with the serving prompt builder, packed into a token file), ``trainer`` and
``export``. So its directory is the kind the default model's is: GPTBigCode with
multi-head attention (GGML's ``starcoder`` loader rejects multi-query), fp16 safetensors,
the tokenizer files and ``rubytailor.json``. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, cast

from rubytailor.model.backends import ModelMetadata
from rubytailor.training.export import export_model, export_run
from rubytailor.training.fim_dataset import FimConfig
from rubytailor.training.prepare import prepare_split
from rubytailor.training.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer
from rubytailor.training.trainer import ModelShape, TrainConfig, build_model, train

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)

FIM_FORMAT = "starcoder"
FIM_ORDER = "spm"
BATCH_SIZE = 8
MAX_SEQ_LEN = 256  # windows of the builtin files' size; longer ones would only cost time

# Small, varied Ruby: classes, blocks, hashes, RSpec, conditionals, a heredoc.
BUILTIN_CORPUS: tuple[str, ...] = (
    """class Inventory
  attr_reader :items

  def initialize(items = [])
    @items = items
  end

  def add(item, quantity: 1)
    @items << { name: item, quantity: quantity }
    self
  end

  def total
    @items.sum { |item| item[:quantity] }
  end

  def find(name)
    @items.find { |item| item[:name] == name }
  end
end
""",
    """module Shop
  class Order
    STATUSES = %i[pending paid shipped].freeze

    def initialize(customer, lines)
      @customer = customer
      @lines = lines
      @status = :pending
    end

    def paid?
      @status == :paid
    end

    def amount
      @lines.map { |line| line.price * line.quantity }.sum
    end
  end
end
""",
    """require "spec_helper"

RSpec.describe Inventory do
  let(:inventory) { described_class.new }

  describe "#add" do
    it "adds an item" do
      inventory.add("apple", quantity: 2)
      expect(inventory.total).to eq(2)
    end
  end

  context "when empty" do
    it "has no items" do
      expect(inventory.items).to be_empty
    end
  end
end
""",
    """def classify(score)
  if score >= 90
    "excellent"
  elsif score >= 50
    "good"
  else
    "poor"
  end
end

def each_pair(list)
  return enum_for(:each_pair, list) unless block_given?

  list.each_with_index do |value, index|
    yield value, index
  end
end
""",
    """class UsersController < ApplicationController
  before_action :set_user, only: %i[show update]

  def index
    @users = User.where(active: true).order(:name)
  end

  def show
    render json: @user
  end

  private

  def set_user
    @user = User.find(params[:id])
  end
end
""",
    """config = {
  name: "rubytailor",
  version: "0.1.0",
  tags: ["ruby", "lsp"],
}

config.each do |key, value|
  puts "#{key}: #{value}"
end

case config[:name]
when "rubytailor" then puts "ok"
else puts "unknown"
end

USAGE = <<~TEXT
  Usage: rubytailor [options]
TEXT

square = ->(x) { x * x }
numbers = (1..10).select(&:even?).map { |n| square.call(n) }
""",
)


def build_tiny_model(
    out_dir: Path,
    *,
    corpus: Sequence[str] | None = None,
    vocab_size: int = 512,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 2,
    n_positions: int = 512,
    seed: int = 0,
    train_steps: int = 0,
) -> Path:
    """Write a complete model directory to ``out_dir`` and return it. Deterministic in ``seed``.

    With ``train_steps`` 0 the model keeps its random initialization and skips the
    training loop (and the token file it would read); the tokenizer is trained either way.
    """
    out_dir = Path(out_dir)
    docs = [doc for doc in (BUILTIN_CORPUS if corpus is None else corpus) if doc]
    if not docs:
        raise ValueError("build_tiny_model needs a non-empty corpus")
    with tempfile.TemporaryDirectory(prefix="rubytailor-tiny-") as tmp:
        work = Path(tmp)
        tokenizer_dir = work / "tokenizer"
        tok = train_tokenizer(docs, vocab_size=vocab_size)
        save_tokenizer(tok, tokenizer_dir, context_length=n_positions)
        config = TrainConfig(
            data_dir=work / "data",
            run_dir=work / "run",
            vocab_size=len(load_tokenizer(tokenizer_dir)),
            shape=ModelShape(
                n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_positions=n_positions
            ),
            seq_len=min(n_positions, MAX_SEQ_LEN),
            batch_size=BATCH_SIZE,
            lr=3e-3,
            warmup_steps=max(1, train_steps // 10),
            weight_decay=0.0,
            max_steps=train_steps,
            seed=seed,
            device="cpu",  # the same weights on every machine, GPU or not
        )
        if train_steps > 0:
            # Enough passes over the files for about one epoch of the run: each pass cuts
            # them at fresh FIM points, so the steps see new examples, not the same few.
            per_pass = sum(len(e.ids) for e in tok.encode_batch(docs, add_special_tokens=False))
            passes = math.ceil(train_steps * BATCH_SIZE * config.seq_len / max(per_pass, 1))
            _write_corpus(work / "corpus", docs * max(passes, 1))
            prepare_split(
                work / "corpus", tokenizer_dir, config.data_dir, "train", FimConfig(seed=seed)
            )
            train(config)
            export_run(
                config.run_dir,
                out_dir,
                tokenizer_dir=tokenizer_dir,
                fim_format=FIM_FORMAT,
                fim_order=FIM_ORDER,
            )
        else:
            model = cast("PreTrainedModel", build_model(config))
            trained = {
                "by": __name__,
                "architecture": model.config.model_type,
                "parameters": int(sum(p.numel() for p in model.parameters())),
                "shape": asdict(config.shape),
                "steps": 0,
                "seed": seed,
            }
            metadata = ModelMetadata(
                fim_format=FIM_FORMAT,
                fim_order=FIM_ORDER,
                context_length=n_positions,
                trained=trained,
            )
            export_model(model, out_dir, tokenizer_dir=tokenizer_dir, metadata=metadata)
    log.info("tiny model (%d training steps) written to %s", train_steps, out_dir)
    return out_dir


def _write_corpus(out: Path, docs: Sequence[str]) -> None:
    """``docs`` as the train split of a corpus directory, the records ``prepare`` reads."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "train.jsonl").open("w", encoding="utf-8") as fh:
        for n, text in enumerate(docs):
            sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
            record = {"source": "tiny", "path": f"tiny/{n}.rb", "sha256": sha256, "text": text}
            fh.write(json.dumps(record) + "\n")
