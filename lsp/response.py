"""Turning a suggestion into each request's answer. Ranges use the snapshot's encoding.

Each suggestion answered gets an id, remembered for its events (lsp/events.py): the
stream's result carries it, and inline and completion items carry it in their accept
command, which clients run when the user accepts the item.
"""

from __future__ import annotations

from typing import Any

from lsprotocol import types

from rubytailor.lsp.events import SUGGESTIONS, source_kind
from rubytailor.lsp.streaming import PartialStream
from rubytailor.lsp.suggestion import Suggestion
from rubytailor.model.backends import adapter_of
from rubytailor.model.pipeline import CompletionResult
from rubytailor.protocol import ACCEPT_COMMAND, ACCEPT_TITLE, StreamResult, SuggestionRef

# Sorts before any letter or digit, so clients list the AI item first.
SORT_FIRST = "!0"
LABEL_DESCRIPTION = "rubytailor (AI)"


def _position(suggestion: Suggestion, offset: int) -> types.Position:
    line, character = suggestion.snapshot.position_at(offset)
    return types.Position(line=line, character=character)


def _remember(suggestion_id: str, result: CompletionResult, text: str) -> None:
    SUGGESTIONS.remember(
        suggestion_id,
        text,
        model_id=result.model_id,
        source=source_kind(result.source),
        latency_ms=result.total_ms,
    )


def accept_command(suggestion_id: str) -> types.Command:
    """Run by the client when the user accepts the item: the ``accepted`` event."""
    argument: SuggestionRef = {"suggestion_id": suggestion_id}
    return types.Command(title=ACCEPT_TITLE, command=ACCEPT_COMMAND, arguments=[argument])


def _new_id(result: CompletionResult, text: str) -> str:
    suggestion_id = SUGGESTIONS.new_id()
    _remember(suggestion_id, result, text)
    return suggestion_id


def inline_list(suggestion: Suggestion | None) -> types.InlineCompletionList:
    """One item inserted at the cursor (an empty range), or no items."""
    if suggestion is None or not suggestion.result.text or suggestion.result.cancelled:
        return types.InlineCompletionList(items=[])
    cursor = _position(suggestion, suggestion.offset)
    text = suggestion.result.text
    return types.InlineCompletionList(
        items=[
            types.InlineCompletionItem(
                insert_text=text,
                range=types.Range(start=cursor, end=cursor),
                command=accept_command(_new_id(suggestion.result, text)),
            )
        ]
    )


def completion_list(
    suggestion: Suggestion | None, label_details_support: bool
) -> types.CompletionList:
    """The first line of the suggestion as one completion item, marked as AI.

    The edit replaces the word before the cursor with that word plus the suggestion, so
    clients that filter by the typed word (filterText) keep the item, and accepting it
    inserts exactly the suggestion. isIncomplete makes clients ask again as the user types.
    """
    empty = types.CompletionList(is_incomplete=True, items=[])
    if suggestion is None or suggestion.result.cancelled:
        return empty
    first_line = suggestion.result.text.split("\n", 1)[0].rstrip("\r")
    if not first_line.strip():
        return empty
    snapshot, offset = suggestion.snapshot, suggestion.offset
    word = snapshot.word_before(offset)
    new_text = word + first_line
    edit = types.TextEdit(
        range=types.Range(
            start=_position(suggestion, offset - len(word)), end=_position(suggestion, offset)
        ),
        new_text=new_text,
    )
    # Without labelDetails the label itself says where the item comes from.
    label = new_text.strip() if label_details_support else f"⟨rubytailor⟩ {new_text.strip()}"
    item = types.CompletionItem(
        label=label,
        kind=types.CompletionItemKind.Text,
        detail=LABEL_DESCRIPTION,
        label_details=(
            types.CompletionItemLabelDetails(description=LABEL_DESCRIPTION)
            if label_details_support
            else None
        ),
        sort_text=SORT_FIRST,
        filter_text=new_text,
        insert_text=new_text,
        insert_text_format=types.InsertTextFormat.PlainText,
        text_edit=edit,
        preselect=True,
        # What the item adds is the first line: that is the suggestion accepted.
        command=accept_command(_new_id(suggestion.result, first_line)),
    )
    return types.CompletionList(is_incomplete=True, items=[item])


def stream_result(
    stream_id: Any, suggestion: Suggestion | None, stream: PartialStream | None = None
) -> StreamResult:
    """The response of ``rubytailor/inlineStream``; ``text`` equals the joined partials.

    ``suggestion_id`` only with text that was not cancelled; it is the id the stream's
    partials carried (``stream``), if they carried one.
    """
    if suggestion is None:
        return {
            "id": stream_id,
            "text": "",
            "verdict": "none",
            "source": "none",
            "cancelled": False,
        }
    result = suggestion.result
    line, character = suggestion.snapshot.position_at(suggestion.offset)
    answer: StreamResult = {
        "id": stream_id,
        "text": result.text,
        "verdict": result.verdict,
        "source": result.source,
        "cancelled": result.cancelled,
        "version": suggestion.snapshot.version,
        "position": {"line": line, "character": character},
        "prompt_tokens": result.prompt_tokens,
        "reused_tokens": result.reused_tokens,
        "generated_tokens": result.generated_tokens,
        "ttft_ms": result.ttft_ms,
        "total_ms": result.total_ms,
        "stop_reason": result.stop_reason,
        "confidence": result.confidence,
        "memory_share": result.memory_share,
        "model_id": result.model_id,
        "adapter_id": adapter_of(result.model_id),
    }
    if result.text and not result.cancelled:
        suggestion_id = stream.ensure_id() if stream is not None else SUGGESTIONS.new_id()
        _remember(suggestion_id, result, result.text)
        answer["suggestion_id"] = suggestion_id
    elif stream is not None and stream.suggestion_id is not None:
        # Superseded after some of it was shown: events may still come for that part.
        _remember(stream.suggestion_id, result, result.text or stream.sent)
    return answer
