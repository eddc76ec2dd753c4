"""The project memory inside the adapter's training loss.

Served, the model's next-token distribution is mixed with the project memory's
(``model/project_memory.py``, ``mix``). Where the memory already predicts the project's
code, what the model adds there hardly changes the suggestion; trained on plain
cross-entropy, an adapter spends its few minutes mostly learning that code again. Trained
on the loss of the mixture, ``-log((1 - W) * p + Q)``, with ``W`` the memory's weight at
a position and ``Q`` its weighted probability of the true token there, a token's gradient
shrinks as the memory's share of it grows: the adapter learns where the memory is wrong
or silent.

``W`` and ``Q`` come once, when the training data is written (``MemoryTargets``, the
``on_ids`` hook of ``write_token_file``): one lookup per token in an index of the training
split's files, the example's own file left out as the server leaves the open file out of
the workspace index. A FIM example's middle is what the server generates, so there the
lookup is the server's too: the open document around the cursor as a second source,
matches anchored at the prompt until the first newline (``token_loop``). Other tokens see
the other files only (the document around them would hold the token itself). Rehearsed
general Ruby gets ``W = 0``: plain cross-entropy. The trainer reads the pairs from
``MEMORY_TARGETS`` beside ``train.bin`` (``training/trainer.py``, ``memory_loss``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from rubytailor.model.project_memory import (
    MAX_MATCH_LEN,
    DocumentSource,
    ProjectMemory,
    target_share,
)
from rubytailor.training.fim_dataset import Encoded, Example


class MemoryTargets:
    """Writes the memory's (W, Q) of every token of the examples it is shown."""

    def __init__(
        self,
        memory: ProjectMemory,
        sources: Sequence[tuple[str | None, str]],
        encode: Callable[[str], list[int]],
        newline_ids: frozenset[int],
        out: BinaryIO,
    ) -> None:
        self._memory = memory
        # By Example.source: (the text's key in the index, None if not project code; text).
        self._sources = sources
        self._encode = encode
        self._newline_ids = newline_ids
        self._out = out

    def __call__(self, batch: list[Example], encoded: list[Encoded]) -> None:
        for example, (prompt, completion) in zip(batch, encoded, strict=True):
            self._out.write(self.targets(example, prompt, completion).tobytes())
        # Out to the OS before write_token_file writes the batch's tokens: a killed run
        # leaves no token file longer than its targets.
        self._out.flush()

    def targets(
        self, example: Example, prompt: list[int], completion: list[int]
    ) -> npt.NDArray[np.float32]:
        """(len(prompt) + len(completion), 2): W and Q for predicting each token from
        the example's tokens before it (none for the first)."""
        ids = prompt + completion
        out = np.zeros((len(ids), 2), dtype=np.float32)
        key, text = self._sources[example.source] if example.source >= 0 else (None, "")
        if key is None:
            return out
        document = None
        if example.middle is not None:
            start, end = example.middle
            document = DocumentSource(self._encode(text[:start]), self._encode(text[end:]))
        anchor: int | None = len(prompt)
        for k in range(1, len(ids)):
            first = max(0, k - MAX_MATCH_LEN)  # the lookup reads no further back
            context = ids[first:k]
            if document is not None and k >= len(prompt):
                rel = None if anchor is None else anchor - first
                matches = self._memory.lookup(context, key, document, rel)
                if ids[k] in self._newline_ids:
                    anchor = None
            else:
                matches = self._memory.lookup(context, key)
            if matches:
                out[k] = target_share(matches, ids[k])
        return out


def newline_ids(decode: Callable[[list[int]], str], vocab_size: int) -> frozenset[int]:
    """The tokens whose text holds a newline."""
    return frozenset(i for i in range(vocab_size) if "\n" in decode([i]))
