"""The rule "a suggestion may not add syntax errors", checked with Prism.

A suggestion *adds no errors* when, comparing Prism's error messages for
prefix+suggestion+suffix with those for prefix+suffix as multisets, no message occurs
more often with the suggestion than without. Positions are ignored because the
suggestion shifts them; a document that is already broken elsewhere can still take a
good suggestion.

A suggestion that adds errors is cut back to its longest run of whole lines from the
start that adds none (lines split after each "\\n"; the last line without one counts
too), or dropped when there is none.

If Prism itself fails (a trap on some pathological document), every candidate counts
as adding errors: a suggestion that could not be checked is never shown.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

from rubytailor.errors import PrismError
from rubytailor.model.outcomes import Verdict
from rubytailor.prism import Prism

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckResult:
    text: str
    verdict: Verdict
    parses: int  # how many Prism parses it took


def line_prefixes(text: str) -> list[str]:
    """The prefixes of ``text`` that end just after a "\\n", shortest first."""
    prefixes = []
    end = text.find("\n")
    while end != -1:
        prefixes.append(text[: end + 1])
        end = text.find("\n", end + 1)
    return prefixes


class _Checker:
    """Judges candidate suggestions against one document, remembering every verdict."""

    def __init__(self, prism: Prism, prefix: str, suffix: str) -> None:
        self._prism = prism
        self._prefix = prefix
        self._suffix = suffix
        self._verdicts: dict[str, bool] = {}
        self.parses = 0
        self._baseline: Counter[str] | None = self._messages(prefix + suffix)

    def adds_no_errors(self, candidate: str) -> bool:
        verdict = self._verdicts.get(candidate)
        if verdict is None:
            verdict = self._judge(candidate)
            self._verdicts[candidate] = verdict
        return verdict

    def _judge(self, candidate: str) -> bool:
        if self._baseline is None:
            return False
        errors = self._messages(self._prefix + candidate + self._suffix)
        # Counter subtraction keeps only positive counts: messages that became more frequent.
        return errors is not None and not (errors - self._baseline)

    def _messages(self, source: str) -> Counter[str] | None:
        self.parses += 1
        try:
            return Counter(d.message for d in self._prism.errors(source))
        except PrismError as exc:
            logger.warning("suggestion not shown: %s", exc)
            return None


def _decide(checker: _Checker, suggestion: str) -> CheckResult:
    """The whole suggestion if it adds no errors, else its longest line prefix that adds none."""
    if not suggestion:
        return CheckResult("", Verdict.EMPTY, checker.parses)
    if checker.adds_no_errors(suggestion):
        return CheckResult(suggestion, Verdict.OK, checker.parses)
    # Longest first: validity is not monotone in length (a later `end` can close an
    # earlier `do`), so the first valid one found from the top is the answer.
    for candidate in reversed(line_prefixes(suggestion)):
        if candidate != suggestion and checker.adds_no_errors(candidate):
            return CheckResult(candidate, Verdict.TRIMMED, checker.parses)
    return CheckResult("", Verdict.DROPPED, checker.parses)


def check_suggestion(prism: Prism, prefix: str, suggestion: str, suffix: str) -> CheckResult:
    """Check ``suggestion`` inserted between ``prefix`` and ``suffix``; trim or drop it."""
    if not suggestion:
        return CheckResult("", Verdict.EMPTY, 0)
    return _decide(_Checker(prism, prefix, suffix), suggestion)


class StreamingCheck:
    """The same rule applied while a suggestion streams in, one completed line at a time.

    ``release(text)`` returns the text that may be shown so far, ``finish(text)`` the final
    answer; each line prefix is parsed at most once across both.

    Why the released text only grows: the candidates for a text are its line prefixes
    (each ends at a "\\n"). Appending to the text keeps every completed line completed,
    so the candidates of a longer text include all candidates of a shorter one. The
    longest valid candidate is a maximum over that set, so it can only get longer, and
    since all candidates are prefixes of one text, a longer one extends a shorter one.
    ``finish`` adds one more candidate (the whole text) to the same set, so its answer
    extends everything released before, and it is exactly ``check_suggestion``'s answer
    because both run ``_decide`` with the same verdicts.
    """

    def __init__(self, prism: Prism, prefix: str, suffix: str) -> None:
        self._checker = _Checker(prism, prefix, suffix)
        self._complete = ""  # the completed lines seen by the last release()
        self._released = ""

    def release(self, text_so_far: str) -> str:
        """The longest line prefix of ``text_so_far`` that adds no errors ("" if none)."""
        complete = text_so_far[: text_so_far.rfind("\n") + 1]
        if complete == self._complete:
            return self._released
        if not complete.startswith(self._complete):
            # The text was rewritten rather than extended (not expected from a stream):
            # judge from scratch; the cached verdicts still apply.
            self._released = ""
            start = 0
        else:
            start = len(self._complete)
        for candidate in line_prefixes(complete):
            if len(candidate) > start and self._checker.adds_no_errors(candidate):
                self._released = candidate
        self._complete = complete
        return self._released

    def finish(self, final_text: str) -> CheckResult:
        """What ``check_suggestion`` returns for ``final_text``, reusing verdicts so far.

        ``parses`` counts every parse this streaming check made, release() calls included.
        """
        return _decide(self._checker, final_text)
