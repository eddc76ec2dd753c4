"""Turning a suggestion into each request's answer. Ranges use the snapshot's encoding."""

from __future__ import annotations

from typing import Any

from lsprotocol import types

from rubytailor.lsp.suggestion import Suggestion
from rubytailor.model.backends import adapter_of
from rubytailor.protocol import StreamResult

# Sorts before any letter or digit, so clients list the AI item first.
SORT_FIRST = "!0"
LABEL_DESCRIPTION = "rubytailor (AI)"


def _position(suggestion: Suggestion, offset: int) -> types.Position:
    line, character = suggestion.snapshot.position_at(offset)
    return types.Position(line=line, character=character)


def inline_list(suggestion: Suggestion | None) -> types.InlineCompletionList:
    """One item inserted at the cursor (an empty range), or no items."""
    if suggestion is None or not suggestion.result.text or suggestion.result.cancelled:
        return types.InlineCompletionList(items=[])
    cursor = _position(suggestion, suggestion.offset)
    return types.InlineCompletionList(
        items=[
            types.InlineCompletionItem(
                insert_text=suggestion.result.text,
                range=types.Range(start=cursor, end=cursor),
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
    )
    return types.CompletionList(is_incomplete=True, items=[item])


def stream_result(stream_id: Any, suggestion: Suggestion | None) -> StreamResult:
    """The response of ``rubytailor/inlineStream``; ``text`` equals the joined partials."""
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
    return {
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
