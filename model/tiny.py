"""Tiny self-built models: a real Hugging Face model directory in seconds, for tests and demos.

``build_tiny_model`` writes the same kind of directory the trained default model is:
a GPTBigCode config + safetensors weights, a byte-level BPE ``tokenizer.json`` with
StarCoder-named FIM tokens, and ``rubytailor.json``. Nothing is downloaded. With
``train_steps`` > 0 it is briefly trained on FIM examples built with
``model.prompt.training_text`` (the serving prompt layout), so its output looks like Ruby.

Multi-head attention (``multi_query=False``) keeps the model exportable to GGML, whose
``starcoder`` loader rejects the multi-query c_attn shape.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM, PreTrainedTokenizerFast

from rubytailor.model.backends import ModelMetadata
from rubytailor.model.fim import get_format
from rubytailor.model.prompt import training_text

log = logging.getLogger(__name__)

FIM_FORMAT = "starcoder"
FIM_ORDER = "spm"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<fim_pad>"
# StarCoder's ids 0..5, in its order, so exported vocabularies line up with its convention.
SPECIAL_TOKENS = (
    EOS_TOKEN,
    "<fim_prefix>",
    "<fim_middle>",
    "<fim_suffix>",
    PAD_TOKEN,
    "<file_sep>",
)

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
    corpus: list[str] | None = None,
    vocab_size: int = 512,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 2,
    n_positions: int = 512,
    seed: int = 0,
    train_steps: int = 0,
) -> Path:
    """Write a complete model directory to ``out_dir`` and return it. Deterministic in ``seed``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    docs = list(corpus) if corpus is not None else list(BUILTIN_CORPUS)
    if not docs:
        raise ValueError("build_tiny_model needs a non-empty corpus")

    tokenizer = train_tokenizer(docs, vocab_size=vocab_size)
    torch.manual_seed(seed)
    config = GPTBigCodeConfig(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        multi_query=False,
        bos_token_id=token_id(tokenizer, EOS_TOKEN),
        eos_token_id=token_id(tokenizer, EOS_TOKEN),
        pad_token_id=token_id(tokenizer, PAD_TOKEN),
    )
    model = GPTBigCodeForCausalLM(config)
    if train_steps > 0:
        _train(model, tokenizer, docs, steps=train_steps, seed=seed)
    model.eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    ModelMetadata(
        fim_format=FIM_FORMAT,
        fim_order=FIM_ORDER,
        context_length=n_positions,
        trained={"by": "rubytailor.model.tiny", "train_steps": train_steps, "seed": seed},
    ).write(out_dir)
    log.info("tiny model written to %s (%d params)", out_dir, model.num_parameters())
    return out_dir


def train_tokenizer(docs: Sequence[str], *, vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (any text encodes) with the StarCoder special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=list(SPECIAL_TOKENS[1:]),
        model_max_length=1_000_000,
    )


def token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    found = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(found, int):
        raise ValueError(f"{token!r} is not a single token of this tokenizer")
    return found


def fim_example(doc: str, rng: random.Random) -> str:
    """One SPM training example: the middle is the rest of a line plus up to two more lines."""
    fmt = get_format(FIM_FORMAT)
    start = rng.randrange(len(doc) + 1)
    end = start
    for _ in range(rng.randint(1, 3)):
        nl = doc.find("\n", end)
        end = len(doc) if nl < 0 else nl + 1
    return training_text(doc[:start], doc[start:end], doc[end:], fmt, FIM_ORDER)


def _train(
    model: GPTBigCodeForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    docs: Sequence[str],
    *,
    steps: int,
    seed: int,
    batch_size: int = 8,
) -> None:
    rng = random.Random(seed)
    pad_id = token_id(tokenizer, PAD_TOKEN)
    max_len = model.config.n_positions
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for step in range(steps):
        texts = [fim_example(rng.choice(docs), rng) for _ in range(batch_size)]
        encoded = [tokenizer.encode(t, add_special_tokens=False)[-max_len:] for t in texts]
        width = max(len(ids) for ids in encoded)
        # (batch, width) right-padded; padded positions carry no loss and no attention.
        input_ids = torch.full((batch_size, width), pad_id, dtype=torch.long)
        mask = torch.zeros((batch_size, width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        labels = input_ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            log.info("tiny model step %d/%d loss %.3f", step + 1, steps, loss.item())
