"""The suggestion cache: typing through a suggestion and exact repeats, in bounded memory."""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from rubytailor.model.suggestion_cache import CacheHit, SuggestionCache

DOC = "file:///app/models/order.rb"
PREFIX = "class Order\n  def total\n    "
SUFFIX = "\n  end\nend\n"
SUGGESTION = "@lines.sum(&:amount)"


@pytest.fixture
def cache() -> SuggestionCache:
    cache = SuggestionCache()
    cache.remember(DOC, PREFIX, SUFFIX, SUGGESTION)
    return cache


@pytest.mark.parametrize("typed", ["@", "@lines", "@lines.sum(&:amount"])
def test_typing_through_returns_the_rest_of_the_suggestion(
    cache: SuggestionCache, typed: str
) -> None:
    hit = cache.lookup(DOC, PREFIX + typed, SUFFIX)
    assert hit == CacheHit(SUGGESTION[len(typed) :], "typed_through")
    assert PREFIX + typed + hit.text == PREFIX + SUGGESTION


def test_typing_the_whole_suggestion_is_a_miss(cache: SuggestionCache) -> None:
    assert cache.lookup(DOC, PREFIX + SUGGESTION, SUFFIX) is None


@pytest.mark.parametrize(
    ("prefix", "suffix"),
    [
        (PREFIX + "@items", SUFFIX),  # typed something else
        (PREFIX[:-1], SUFFIX),  # deleted a character
        (PREFIX + "@", SUFFIX + "# note\n"),  # the text after the cursor changed
        ("#" + PREFIX[1:] + "@", SUFFIX),  # an edit earlier in the prefix, same length
    ],
)
def test_changes_other_than_typing_the_suggestion_miss(
    cache: SuggestionCache, prefix: str, suffix: str
) -> None:
    assert cache.lookup(DOC, prefix, suffix) is None


def test_another_document_with_the_same_text_misses(cache: SuggestionCache) -> None:
    assert cache.lookup("file:///other.rb", PREFIX + "@", SUFFIX) is None
    assert cache.lookup("file:///other.rb", PREFIX, SUFFIX) is None


def test_exact_repeat_after_moving_elsewhere(cache: SuggestionCache) -> None:
    cache.remember(DOC, "x = ", "\n", "1")
    assert cache.lookup(DOC, PREFIX, SUFFIX) == CacheHit(SUGGESTION, "exact")
    # Typing through follows the latest suggestion of the document only.
    assert cache.lookup(DOC, PREFIX + "@", SUFFIX) is None


def test_exact_beats_typing_through() -> None:
    cache = SuggestionCache()
    cache.remember(DOC, PREFIX + "@", SUFFIX, "items.size")
    cache.remember(DOC, PREFIX, SUFFIX, SUGGESTION)
    assert cache.lookup(DOC, PREFIX + "@", SUFFIX) == CacheHit("items.size", "exact")


def test_empty_suggestions_are_remembered_but_never_typed_through() -> None:
    cache = SuggestionCache()
    cache.remember(DOC, PREFIX, SUFFIX, "")
    assert cache.lookup(DOC, PREFIX, SUFFIX) == CacheHit("", "exact")
    assert cache.lookup(DOC, PREFIX + "@", SUFFIX) is None


def test_least_recently_used_states_are_evicted() -> None:
    cache = SuggestionCache(capacity=2)
    cache.remember(DOC, "a = ", "\n", "1")
    cache.remember(DOC, "b = ", "\n", "2")
    assert cache.lookup(DOC, "a = ", "\n") is not None  # a is now the most recent
    cache.remember(DOC, "c = ", "\n", "3")
    assert cache.lookup(DOC, "b = ", "\n") is None
    assert cache.lookup(DOC, "a = ", "\n") == CacheHit("1", "exact")
    assert cache.lookup(DOC, "c = ", "\n") == CacheHit("3", "exact")


def test_forget_and_clear() -> None:
    cache = SuggestionCache()
    cache.remember(DOC, PREFIX, SUFFIX, SUGGESTION)
    cache.remember("file:///b.rb", "x", "", "y")
    cache.forget(DOC)
    assert cache.lookup(DOC, PREFIX, SUFFIX) is None
    assert cache.lookup(DOC, PREFIX + "@", SUFFIX) is None
    assert cache.lookup("file:///b.rb", "x", "") is not None
    cache.clear()
    assert cache.lookup("file:///b.rb", "x", "") is None


def test_large_documents_are_not_kept_in_memory() -> None:
    cache = SuggestionCache(capacity=64)
    body = "  def m\n    x = 1\n  end\n" * 40_000  # about 1 MB
    tracemalloc.start()
    try:
        for i in range(20):
            prefix = f"# {i}\n" + body + "  def z\n    "
            cache.remember(f"file:///{i}.rb", prefix, body, "y = 2")
            del prefix
        gc.collect()
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 20 MB of document text went in; a few kilobytes of bookkeeping stay.
    assert current < 200_000
    assert cache.lookup("file:///3.rb", "# 3\n" + body + "  def z\n    y", body) == CacheHit(
        " = 2", "typed_through"
    )
