"""Speculative decoding from the project memory: the same greedy text in fewer passes.

The bundled model, the repository's examples as the project memory, and prompts cut
inside lines of those files, so the memory has long matches and drafts. Each engine
that verifies drafts must give exactly the text it gives with drafting off, also when
drafts are rejected (a low share threshold, with the open file left out of the memory so
that its matches are shorter, makes the model overrule some of them).
"""

from __future__ import annotations

import pytest

from rubytailor.model.backends import load_backend, token_loop
from rubytailor.model.backends.base import CancelToken, GenerationParams, GenerationStats
from rubytailor.model.backends.token_loop import TokenLoopBackend
from rubytailor.model.fim import get_format
from rubytailor.model.project_memory import MemoryRequest, ProjectMemory, WorkspaceIndex
from rubytailor.model.prompt import assemble
from rubytailor.paths import REPO_ROOT, default_model_dir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (default_model_dir() / "model.safetensors").is_file(), reason="no bundled model"
    ),
]

FIM = get_format("starcoder")
SOURCES = sorted((REPO_ROOT / "examples").glob("*.rb"))


def engines() -> list[str]:
    found = ["transformers"]
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        pass
    else:
        found.append("llamacpp")
    return found


def cases() -> list[tuple[str, str, str]]:
    """(file, prefix, suffix) cut after the first word of every third non-blank line."""
    found = []
    for path in SOURCES:
        text = path.read_text()
        offset = 0
        for n, line in enumerate(text.splitlines(keepends=True)):
            words = line.split()
            if n % 3 == 0 and len(words) > 2:
                cut = offset + line.index(words[0]) + len(words[0])
                found.append((str(path), text[:cut], text[cut:]))
            offset += len(line)
    return found[:24]


@pytest.fixture(scope="module", params=engines())
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> object:
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RUBYTAILOR_CACHE_DIR", str(cache))
        loaded = load_backend(request.param, default_model_dir(), threads=1)
    assert isinstance(loaded, TokenLoopBackend) and loaded.verifies_drafts
    return loaded


@pytest.fixture(scope="module")
def memory(backend: TokenLoopBackend) -> ProjectMemory:
    index = WorkspaceIndex(backend._encode, background_merge=False)
    for path in SOURCES:
        index.set_text(str(path), path.read_text())
    return ProjectMemory(index)


def generate(
    backend: TokenLoopBackend,
    memory: ProjectMemory,
    prefix: str,
    suffix: str,
    *,
    drafts: bool,
    exclude: str | None = None,
) -> tuple[str, GenerationStats]:
    backend.verifies_drafts = drafts
    backend.reset_cache()  # each case from a cold cache, the same for both runs
    try:
        stats = GenerationStats()
        params = GenerationParams(
            max_new_tokens=24, memory=MemoryRequest(memory, prefix, suffix, exclude_key=exclude)
        )
        prompt = assemble(prefix, suffix, FIM, "spm")
        text = "".join(backend.stream(prompt, params, CancelToken(), stats))
        return text, stats
    finally:
        backend.verifies_drafts = True


@pytest.mark.parametrize("min_share", [token_loop.DRAFT_MIN_SHARE, 0.05])
def test_drafting_gives_the_text_of_plain_greedy_decoding(
    backend: TokenLoopBackend,
    memory: ProjectMemory,
    min_share: float,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(token_loop, "DRAFT_MIN_SHARE", min_share)
    drafted = accepted = 0
    for path, prefix, suffix in cases():
        exclude = path if min_share < 0.5 else None
        plain, plain_stats = generate(
            backend, memory, prefix, suffix, drafts=False, exclude=exclude
        )
        fast, stats = generate(backend, memory, prefix, suffix, drafts=True, exclude=exclude)
        assert fast == plain, (prefix[-60:], plain, fast)
        assert stats.generated_tokens == plain_stats.generated_tokens
        assert stats.stopped_by == plain_stats.stopped_by
        assert stats.token_probs == pytest.approx(plain_stats.token_probs, abs=1e-3)
        drafted += int(stats.extra.get("drafted", 0))
        accepted += int(stats.extra.get("accepted", 0))
    assert drafted > 20, "the cases should give the memory long matches to draft from"
    if min_share >= 0.5:
        # The memory alone decides these tokens: every draft is the greedy choice.
        assert accepted == drafted
    else:
        assert 0 < accepted < drafted, "the model should overrule some weak drafts"


def test_a_draft_cut_by_the_token_budget_leaves_a_consistent_cache(
    backend: TokenLoopBackend, memory: ProjectMemory
) -> None:
    _, prefix, suffix = cases()[0]
    for budget in (1, 2, 3, 5):
        outputs = []
        for drafts in (False, True):
            backend.verifies_drafts = drafts
            backend.reset_cache()
            stats = GenerationStats()
            params = GenerationParams(
                max_new_tokens=budget, memory=MemoryRequest(memory, prefix, suffix)
            )
            prompt = assemble(prefix, suffix, FIM, "spm")
            first = "".join(backend.stream(prompt, params, CancelToken(), stats))
            assert stats.generated_tokens <= budget
            # The cache is reused by the next call: it must hold exactly what was kept.
            again = "".join(backend.stream(prompt, params, CancelToken(), GenerationStats()))
            outputs.append((first, again))
        backend.verifies_drafts = True
        assert outputs[0] == outputs[1]
        assert outputs[1][0] == outputs[1][1]
