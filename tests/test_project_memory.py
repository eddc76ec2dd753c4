"""The project memory: workspace index and document source against brute force, mixing."""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from itertools import pairwise

import numpy as np
import pytest

from rubytailor.model.project_memory import (
    MAX_MATCH_LEN,
    MEMORY_WEIGHT_CAP,
    DocumentSource,
    Match,
    ProjectMemory,
    WorkspaceIndex,
    match_weight,
    mix,
)
from rubytailor.model.suffix_array import Segment, sort_suffixes

Answer = tuple[int, tuple[tuple[int, int], ...]]


def brute_force(
    files: Mapping[str, Sequence[int]],
    context: Sequence[int],
    max_len: int,
    exclude: str | None = None,
) -> Answer:
    """Longest n with context[-n:] followed by a token in a file but ``exclude``; counts."""
    for n in range(min(max_len, len(context)), 0, -1):
        pattern = list(context[-n:])
        counts: Counter[int] = Counter()
        for key, seq in files.items():
            if key != exclude:
                for i in range(len(seq) - n):  # i + n < len: a token follows
                    if list(seq[i : i + n]) == pattern:
                        counts[seq[i + n]] += 1
        if counts:
            return n, tuple(sorted(counts.items()))
    return 0, ()


def answer(match: Match) -> Answer:
    return match.n, tuple(zip(match.next_ids.tolist(), match.counts.tolist(), strict=True))


def random_files(rng: random.Random, vocab: int, count: int, longest: int) -> dict[str, list[int]]:
    return {
        f"app/f{i}.rb": [rng.randrange(vocab) for _ in range(rng.randrange(longest))]
        for i in range(count)
    }


def contexts(rng: random.Random, files: Mapping[str, Sequence[int]], vocab: int) -> list[list[int]]:
    """Random contexts, and file slices (so long matches), some with a random tail."""
    out = [[], [rng.randrange(vocab)]]
    seqs = [s for s in files.values() if s]
    for _ in range(30):
        if seqs and rng.random() < 0.7:
            seq = rng.choice(seqs)
            end = rng.randrange(1, len(seq) + 1)
            ctx = list(seq[max(0, end - rng.randrange(1, 40)) : end])
            if rng.random() < 0.3:
                ctx.append(rng.randrange(vocab))
        else:
            ctx = [rng.randrange(vocab) for _ in range(rng.randrange(1, 12))]
        out.append(ctx)
    return out


def assert_index_matches(
    index: WorkspaceIndex, files: Mapping[str, Sequence[int]], rng: random.Random, vocab: int
) -> None:
    for ctx in contexts(rng, files, vocab):
        for exclude in [None, *list(files)[:3], "not/indexed.rb"]:
            max_len = rng.choice([1, 3, 8, MAX_MATCH_LEN])
            got = answer(index.longest_match(ctx, max_len=max_len, exclude=exclude))
            assert got == brute_force(files, ctx, max_len, exclude), (ctx, exclude, max_len)


def test_sort_suffixes_orders_by_first_depth_tokens() -> None:
    rng = np.random.default_rng(0)
    for depth in (1, 2, 5, 8, 32):
        text = np.concatenate([rng.integers(-1, 3, 300), np.full(depth, -1)])
        order = sort_suffixes(text, depth)
        assert sorted(order.tolist()) == np.flatnonzero(text != -1).tolist()
        prefixes = [tuple(text[p : p + depth].tolist()) for p in order]
        assert prefixes == sorted(prefixes)


@pytest.mark.parametrize("vocab", [2, 5, 20])
def test_index_equals_brute_force(vocab: int) -> None:
    rng = random.Random(vocab)
    for _ in range(12):
        files = random_files(rng, vocab, rng.randrange(1, 7), 120)
        files["app/empty.rb"] = []
        index = WorkspaceIndex(background_merge=False)
        index.update_many(files)
        assert_index_matches(index, files, rng, vocab)


def test_large_ranges_and_file_ends() -> None:
    """Long repeats (ranges far over the small-range cutoff) and matches only at file ends."""
    files = {"a": [1, 2] * 400, "b": [3] * 300 + [1, 2], "c": [7, 8, 9]}
    index = WorkspaceIndex(background_merge=False)
    index.update_many(files)
    for ctx in ([1, 2], [2, 1, 2], [3] * 40, [3, 1, 2], [5, 3, 1, 2], [8, 9], [7, 8]):
        for exclude in (None, "a", "b", "c"):
            got = answer(index.longest_match(ctx, exclude=exclude))
            assert got == brute_force(files, ctx, MAX_MATCH_LEN, exclude)
    # [8, 9] occurs only at the end of file c, followed by nothing: no match at all.
    assert index.longest_match([8, 9]).n == 0


def test_incremental_updates_equal_a_fresh_build() -> None:
    rng = random.Random(7)
    vocab = 6
    index = WorkspaceIndex(max_segments=3, background_merge=False)
    state: dict[str, list[int]] = {}
    merged_at_some_point = False
    for step in range(160):
        key = f"f{rng.randrange(12)}.rb"
        if rng.random() < 0.25:
            index.remove(key)
            state.pop(key, None)
        elif rng.random() < 0.1:
            batch = random_files(rng, vocab, 3, 60)
            index.update_many(batch)
            state.update(batch)
        else:
            ids = [rng.randrange(vocab) for _ in range(rng.randrange(60))]
            index.update(key, ids)
            state[key] = ids
        segments = index.stats().segments
        merged_at_some_point |= segments < len(state)
        assert segments <= 3 + 1  # merges keep the count bounded
        if step % 10 == 9:
            fresh = WorkspaceIndex(background_merge=False)
            fresh.update_many(state)
            for ctx in contexts(rng, state, vocab):
                exclude = rng.choice([None, *state])
                assert answer(index.longest_match(ctx, exclude=exclude)) == answer(
                    fresh.longest_match(ctx, exclude=exclude)
                )
            assert_index_matches(index, state, rng, vocab)
            stats = index.stats()
            assert stats.files == len(state)
            assert stats.tokens == sum(map(len, state.values()))
    assert merged_at_some_point
    index.compact()
    assert index.stats().segments == (1 if state else 0)
    assert_index_matches(index, state, rng, vocab)


def test_unchanged_update_is_a_no_op_and_removed_keys_are_gone() -> None:
    index = WorkspaceIndex(background_merge=False)
    index.update("a.rb", [1, 2, 3])
    index.update("a.rb", [1, 2, 3])
    assert index.stats().segments == 1
    index.remove("a.rb")
    index.remove("never.rb")
    assert "a.rb" not in index
    assert index.stats().files == 0
    assert index.longest_match([1, 2]).n == 0


def test_set_text_tokenizes_with_the_given_encoder() -> None:
    index = WorkspaceIndex(encode=lambda text: [ord(c) for c in text])
    index.set_text("a.rb", "def foo\nend\n")
    match = index.longest_match([ord(c) for c in "xx foo"])
    assert match.n == 4 and match.next_ids.tolist() == [ord("\n")]
    with pytest.raises(ValueError):
        WorkspaceIndex().set_text("a.rb", "x")


def test_segment_rejects_negative_ids() -> None:
    with pytest.raises(ValueError):
        Segment([("a", np.array([1, -1, 2]))], 8)


def test_document_source_equals_brute_force() -> None:
    rng = random.Random(3)
    for vocab in (2, 4, 10):
        for _ in range(20):
            before = [rng.randrange(vocab) for _ in range(rng.randrange(60))]
            after = [rng.randrange(vocab) for _ in range(rng.randrange(60))]
            doc = DocumentSource(before, after)
            parts = {"before": before, "after": after}
            for ctx in [*contexts(rng, parts, vocab), before, before[-5:]]:
                max_len = rng.choice([2, 8, MAX_MATCH_LEN])
                got = answer(doc.longest_match(ctx, max_len))
                assert got == brute_force(parts, ctx, max_len), (before, after, ctx)


def test_document_source_never_counts_the_end_of_the_prefix() -> None:
    doc = DocumentSource([5, 6, 7], [])
    assert doc.longest_match([5, 6, 7]).n == 0  # only occurrence is the cursor itself
    assert answer(doc.longest_match([9, 5, 6])) == (2, ((7, 1),))
    # No match across the cursor: before ends 7, after starts 8.
    assert DocumentSource([1, 7], [8, 2]).longest_match([7]).n == 0


def test_mix_without_matches_is_the_model() -> None:
    probs = np.array([0.1, 0.2, 0.7])
    mixed, share = mix(probs, [])
    assert share == 0 and np.array_equal(mixed, probs)
    mixed, share = mix(probs, [Match(0, np.zeros(0, np.int64), np.zeros(0, np.int64))])
    assert share == 0 and np.array_equal(mixed, probs)


def test_mix_weights() -> None:
    probs = np.full(4, 0.25)
    short = Match(1, np.array([2]), np.array([3]))
    mixed, share = mix(probs, [short])
    w = 0.95 * (1 - np.exp(-1 / 6))
    assert share == pytest.approx(w)
    assert mixed[2] == pytest.approx((1 - w) * 0.25 + w)
    assert mixed.sum() == pytest.approx(1.0)
    # Long matches from both sources: capped at 0.98 together, split in proportion.
    file_match = Match(32, np.array([0, 1]), np.array([3, 1]))
    ws_match = Match(32, np.array([1]), np.array([5]))
    mixed, share = mix(probs.astype(np.float32), [file_match, ws_match])
    assert share == pytest.approx(MEMORY_WEIGHT_CAP)
    assert mixed.dtype == np.float32 and mixed.sum() == pytest.approx(1.0, abs=1e-6)
    half = MEMORY_WEIGHT_CAP / 2
    assert mixed[0] == pytest.approx(0.02 * 0.25 + half * 0.75, rel=1e-5)
    assert mixed[1] == pytest.approx(0.02 * 0.25 + half * 0.25 + half, rel=1e-5)
    # One long match alone: near the memory's distribution.
    mixed, share = mix(probs, [ws_match])
    assert share == pytest.approx(match_weight(32)) and mixed[1] > 0.95


def test_project_memory_lookup_combines_sources() -> None:
    index = WorkspaceIndex(background_merge=False)
    index.update_many({"open.rb": [1, 2, 3, 4], "other.rb": [9, 2, 3, 5]})
    memory = ProjectMemory(index)
    doc = DocumentSource([1, 2, 3, 6, 1, 2, 3], [])
    matches = memory.lookup([1, 2, 3], exclude_key="open.rb", document=doc)
    assert [(m.source, *answer(m)) for m in matches] == [
        ("document", 3, ((6, 1),)),
        ("workspace", 2, ((5, 1),)),
    ]
    assert memory.lookup([8, 8]) == []


def test_anchored_lookup_drops_matches_inside_the_suggestion() -> None:
    index = WorkspaceIndex(background_merge=False)
    index.update_many({"other.rb": [7, 5, 6, 4, 2, 3, 9]})
    memory = ProjectMemory(index)
    # Prompt [1, 2], suggestion so far [3]: the match [2, 3] -> 9 reaches into the prompt.
    assert [m.n for m in memory.lookup([1, 2, 3], anchor=2)] == [2]
    # Prompt [1], suggestion so far [5, 6]: [5, 6] -> 4 lies wholly in the suggestion.
    assert memory.lookup([1, 5, 6], anchor=1) == []
    assert [m.n for m in memory.lookup([1, 5, 6], anchor=2)] == [2]  # [5] is prompt
    assert [m.n for m in memory.lookup([1, 5, 6])] == [2]  # no anchor: every match counts
    # A match as long as the index compares may reach further back than it shows.
    long_index = WorkspaceIndex(background_merge=False)
    long_index.update_many({"other.rb": list(range(10, 10 + MAX_MATCH_LEN + 2))})
    ids = list(range(10, 10 + MAX_MATCH_LEN + 1))
    found = ProjectMemory(long_index).lookup(ids, anchor=len(ids) - MAX_MATCH_LEN)
    assert [m.n for m in found] == [MAX_MATCH_LEN]


def test_a_query_does_not_wait_for_a_build(monkeypatch: pytest.MonkeyPatch) -> None:
    import rubytailor.model.project_memory as project_memory

    release, started = threading.Event(), threading.Event()

    class SlowSegment(Segment):
        def __init__(self, *args: object, **kwargs: object) -> None:
            started.set()
            assert release.wait(10)
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    index = WorkspaceIndex(background_merge=False)
    index.update("a.rb", [1, 2, 3])
    monkeypatch.setattr(project_memory, "Segment", SlowSegment)
    writer = threading.Thread(target=index.update, args=("b.rb", [1, 2, 4]))
    writer.start()
    try:
        assert started.wait(10)
        assert index.stats().state == "building"
        assert answer(index.longest_match([1, 2])) == (2, ((3, 1),))  # the state before
    finally:
        release.set()
        writer.join()
    assert index.stats().state == "ready"
    assert answer(index.longest_match([1, 2])) == (2, ((3, 1), (4, 1)))


def test_queries_during_updates_see_consistent_states() -> None:
    """Each answer is that of some state the writer passed through (never a mixture)."""
    rng = random.Random(11)
    vocab = 4
    states: list[dict[str, list[int]]] = [random_files(rng, vocab, 6, 200)]
    for _ in range(60):
        state = dict(states[-1])
        key = f"app/f{rng.randrange(8)}.rb"
        if rng.random() < 0.2:
            state.pop(key, None)
        else:
            state[key] = [rng.randrange(vocab) for _ in range(rng.randrange(200))]
        states.append(state)
    queries = [([rng.randrange(vocab) for _ in range(10)], rng.choice([None, "app/f1.rb"]))]
    queries += [([rng.randrange(vocab) for _ in range(6)], None) for _ in range(3)]
    possible = [{brute_force(s, ctx, MAX_MATCH_LEN, ex) for s in states} for ctx, ex in queries]
    index = WorkspaceIndex(max_segments=2)  # merges often, in the background
    index.update_many(states[0])
    done = threading.Event()
    errors: list[BaseException] = []
    seen = 0

    def read() -> None:
        nonlocal seen
        try:
            while not done.is_set():
                for (ctx, ex), allowed in zip(queries, possible, strict=True):
                    assert answer(index.longest_match(ctx, exclude=ex)) in allowed
                    seen += 1
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for before, after in pairwise(states):
            for key in before.keys() - after.keys():
                index.remove(key)
            for key, ids in after.items():
                if before.get(key) != ids:
                    index.update(key, ids)
    finally:
        done.set()
        reader.join()
    index.wait_for_merges()
    assert not errors, errors[0]
    assert seen > 0
    final = states[-1]
    assert index.stats().state == "ready" and index.stats().files == len(final)
    assert_index_matches(index, final, rng, vocab)
