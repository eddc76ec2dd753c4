"""didChange applied the LSP way, all or nothing.

pygls splits lines with ``str.splitlines``, which also breaks at U+2028, U+2029,
\\f, \\v, U+0085 and U+001C-1E; LSP breaks lines only at "\\n", "\\r\\n" and "\\r",
so an edit after such a character landed in the wrong place. pygls also applied the
changes of one notification one by one, so a bad one left the earlier ones applied.

Here every change of a notification is applied to a copy of the text in the negotiated
position encoding; only if all of them are valid does the document take the result
and the notification's version. Otherwise (a range that is not a range, a version
older than the document's, params the converter refused) the document is marked
stale: the server knows its copy no longer matches the editor's, so it offers no
suggestion for it until the editor sends the whole text again (didOpen, or a change
without a range).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote

from lsprotocol import types
from pygls.workspace import Workspace

from rubytailor.lsp.snapshot import UTF8, UTF16, UTF32, code_units

logger = logging.getLogger(__name__)

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class ChangeError(ValueError):
    """A content change that cannot be applied to the text it is meant for."""


def line_starts(text: str) -> list[int]:
    """Index where each LSP line starts ("\\n", "\\r\\n", "\\r" end lines; nothing else)."""
    return [0, *(m.end() for m in _LINE_BREAK.finditer(text))]


def _line_end(text: str, starts: Sequence[int], line: int) -> int:
    """Index of the end of a line's content, before its line break."""
    if line + 1 >= len(starts):
        return len(text)
    end = starts[line + 1]
    if text[end - 1] == "\n":
        end -= 1
    if end > starts[line] and text[end - 1] == "\r":
        end -= 1
    return end


def offset_of(
    text: str, starts: Sequence[int], line: int, character: int, encoding: str = UTF16
) -> int:
    """Index into ``text`` of an LSP position.

    A character past the line's end means the end (the spec says so); a line past the
    last one means the end of the document, which is what clients mean by it (Neovim
    sends the line count as the end of a whole-buffer range). A position inside a
    character (half a surrogate pair, inside a UTF-8 sequence) snaps to its start.
    """
    if line >= len(starts):
        return len(text)
    start, end = starts[line], _line_end(text, starts, line)
    if encoding == UTF32:
        return min(start + character, end)
    units = 0
    for index in range(start, end):
        width = code_units(text[index], encoding)
        if units + width > character:
            return index
        units += width
    return end


def apply_changes(text: str, changes: Sequence[Any], encoding: str = UTF16) -> tuple[str, bool]:
    """``text`` with every change applied in order; and whether the result came from a
    whole-document change (so it is known to match the editor's). Raises ChangeError."""
    if encoding not in (UTF8, UTF16, UTF32):
        raise ChangeError(f"unknown position encoding {encoding!r}")
    full = False
    for number, change in enumerate(changes):
        new_text = getattr(change, "text", None)
        if not isinstance(new_text, str):
            raise ChangeError(f"contentChanges[{number}] has no text")
        change_range = getattr(change, "range", None)
        if change_range is None:
            text, full = new_text, True
            continue
        try:
            start_pos, end_pos = change_range.start, change_range.end
            points = (start_pos.line, start_pos.character, end_pos.line, end_pos.character)
        except AttributeError as exc:
            raise ChangeError(f"contentChanges[{number}].range is not a range") from exc
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in points):
            raise ChangeError(f"contentChanges[{number}].range has a bad position {points}")
        if (points[2], points[3]) < (points[0], points[1]):
            raise ChangeError(f"contentChanges[{number}].range ends before it starts {points}")
        starts = line_starts(text)
        start = offset_of(text, starts, points[0], points[1], encoding)
        end = offset_of(text, starts, points[2], points[3], encoding)
        text = text[:start] + new_text + text[max(start, end) :]
    return text, full


class DocumentSync:
    """Applies didChange to pygls' workspace documents and remembers stale ones."""

    def __init__(self, tell_user: Callable[[str], None] | None = None) -> None:
        # uri (unquoted, as pygls keys documents) -> why its text cannot be trusted.
        self.stale: dict[str, str] = {}
        self._tell_user = tell_user
        self._told: set[str] = set()

    def is_stale(self, uri: str) -> bool:
        return unquote(uri) in self.stale

    def opened(self, uri: str) -> None:
        """didOpen or didClose: the editor's text (or none) is known again."""
        if self.stale.pop(unquote(uri), None) is not None:
            logger.info("%s is in sync again", uri)

    def mark_stale(self, uri: str, reason: str) -> None:
        key = unquote(uri)
        if key not in self.stale:
            logger.warning(
                "%s: %s; no suggestions for it until the editor sends its whole text",
                uri,
                reason,
            )
            if self._tell_user is not None and key not in self._told:
                # Once per document: suggestions stopping silently would look like a bug.
                self._told.add(key)
                self._tell_user(
                    f"rubytailor lost track of {uri} (the editor sent an edit it could not "
                    "apply); suggestions for it resume when it is reopened"
                )
        self.stale[key] = reason

    def did_change(
        self, workspace: Workspace, params: types.DidChangeTextDocumentParams, encoding: str
    ) -> bool:
        """Apply one didChange; whether the document changed."""
        uri = params.text_document.uri
        document = workspace.text_documents.get(unquote(uri))
        if document is None:
            logger.warning("didChange for %s, which is not open; ignored", uri)
            return False
        version = params.text_document.version
        if document.version is not None and version < document.version:
            self.mark_stale(
                uri, f"didChange went back from version {document.version} to {version}"
            )
            return False
        stale = self.is_stale(uri)
        changes = list(params.content_changes)
        if stale:
            # Only a whole-document change brings a stale copy back; drop what precedes it.
            wholes = [i for i, c in enumerate(changes) if getattr(c, "range", None) is None]
            if not wholes:
                logger.debug("%s is stale; ignoring an incremental change", uri)
                return False
            changes = changes[wholes[-1] :]
        try:
            text, _full = apply_changes(document.source, changes, encoding)
        except ChangeError as exc:
            self.mark_stale(uri, f"rejected didChange (version {version}): {exc}")
            return False
        document._source = text
        document.version = version
        if stale:
            self.opened(uri)
        return True

    def invalid_notification(self, method: str, message: Any, problem: str) -> None:
        """A didChange or didOpen the converter refused (e.g. a version beyond int32) was
        not applied: the editor's text and ours may differ from here on."""
        if method not in (types.TEXT_DOCUMENT_DID_CHANGE, types.TEXT_DOCUMENT_DID_OPEN):
            return
        try:
            uri = message["params"]["textDocument"]["uri"]
        except (KeyError, TypeError):
            return
        if isinstance(uri, str):
            self.mark_stale(uri, f"rejected {method.rpartition('/')[2]}: {problem}")
