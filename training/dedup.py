"""Exact and near-duplicate detection: content hashes and MinHash over token shingles.

Near duplicates are found with MinHash (64 hash functions, XOR-mask permutations of a
64-bit shingle hash) and locality-sensitive hashing (16 bands of 4 rows), then
confirmed by the estimated Jaccard similarity of the shingle sets. Fast enough for tens
of thousands of files in pure Python + numpy.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

NUM_PERM = 64
BANDS = 16
SHINGLE = 5
DEFAULT_THRESHOLD = 0.85
_TOKEN = re.compile(r"\w+|[^\w\s]")
_MASKS = np.random.default_rng(20261124).integers(0, 2**63 - 1, size=NUM_PERM, dtype=np.uint64)


def content_hash(data: bytes) -> str:
    """SHA-256 of the file's bytes, as hex: the record's identity in the manifest."""
    return hashlib.sha256(data).hexdigest()


def normalized_hash(text: str) -> str:
    """Hash that ignores trailing whitespace and blank lines, for exact-duplicate removal."""
    lines = [line.rstrip() for line in text.splitlines()]
    return hashlib.sha256("\n".join(line for line in lines if line).encode()).hexdigest()


def minhash(text: str) -> np.ndarray:
    """The MinHash signature (``NUM_PERM`` uint64) of the text's 5-token shingles."""
    tokens = _TOKEN.findall(text)
    if len(tokens) < SHINGLE:
        tokens = tokens + [""] * (SHINGLE - len(tokens))
    shingles = {" ".join(tokens[i : i + SHINGLE]) for i in range(len(tokens) - SHINGLE + 1)}
    hashes = np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")
            for s in shingles
        ),
        dtype=np.uint64,
        count=len(shingles),
    )
    # (shingles, 1) ^ (1, NUM_PERM) -> min over shingles: one value per permutation.
    return (hashes[:, None] ^ _MASKS[None, :]).min(axis=0)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Estimated Jaccard similarity of two signatures."""
    return float(np.mean(a == b))


class NearDuplicateIndex:
    """Remembers kept files' signatures and answers "is this close to one of them?"."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD) -> None:
        self.threshold = threshold
        self._rows = NUM_PERM // BANDS
        self._buckets: list[dict[bytes, list[int]]] = [{} for _ in range(BANDS)]
        self._signatures: list[np.ndarray] = []
        self._keys: list[str] = []

    def find(self, signature: np.ndarray) -> str | None:
        """The key of a kept file at least ``threshold`` similar, or None."""
        seen: set[int] = set()
        for band, bucket in enumerate(self._buckets):
            for idx in bucket.get(self._band_key(signature, band), ()):
                if idx in seen:
                    continue
                seen.add(idx)
                if similarity(signature, self._signatures[idx]) >= self.threshold:
                    return self._keys[idx]
        return None

    def add(self, key: str, signature: np.ndarray) -> None:
        idx = len(self._signatures)
        self._signatures.append(signature)
        self._keys.append(key)
        for band, bucket in enumerate(self._buckets):
            bucket.setdefault(self._band_key(signature, band), []).append(idx)

    def _band_key(self, signature: np.ndarray, band: int) -> bytes:
        return signature[band * self._rows : (band + 1) * self._rows].tobytes()
