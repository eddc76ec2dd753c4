// Ghost text that grows while the model generates, from rubytailor/inlineStream.
//
// The server streams one suggestion as rubytailor/partial notifications {id, seq,
// text, done}: each text is a delta to append (a line's newline arrives at the start
// of the next delta, "a = 1" then "\n  b = 2"), and exactly one has done: true. One
// stream is current at a time. VS Code asks the provider for ghost text on every
// keystroke; while the typed text is a prefix of the stream's text, the provider
// answers with the rest of it, and when a new delta arrives it asks VS Code to ask
// again (editor.action.inlineSuggest.trigger), so the ghost text grows. Anything else
// (typing something different, moving away, another file) cancels the stream on the
// server ($/cancelRequest) and, where VS Code asks, starts a new one.
//
// Suggestion events (the server appends them to its local events file, for
// `rubytailor stats`): "shown" when an item first goes back to VS Code; "accepted" by
// the item's command, which VS Code runs when Tab accepts the item and which the
// language client sends to the server as workspace/executeCommand (the client
// registers the server's commands; this extension must not); "partial" when an
// accept-word/line inserts the next part of the suggestion (VS Code 1.91's stable API
// has no partial-accept callback: handleDidPartiallyAcceptCompletionItem is a proposed
// API, so this is recognised from the document change: more than one character
// inserted at the cursor that continues the suggestion without completing it);
// "dismissed" on Escape, or when typing something else or moving the cursor away ends
// a shown suggestion (VS Code reports neither to a provider either).

import * as vscode from "vscode";
import type { LanguageClient } from "vscode-languageclient/node";

export const STREAM_METHOD = "rubytailor/inlineStream";
export const PARTIAL_METHOD = "rubytailor/partial";
// rubytailor/protocol.py
export const SHOW_METHOD = "textDocument/didShowCompletion";
export const PARTIAL_ACCEPT_METHOD = "textDocument/didPartiallyAcceptCompletion";
export const DISMISS_METHOD = "rubytailor/didDismissCompletion";
// The cursor rests here: the server evaluates that prompt once the editor is idle.
export const PREWARM_METHOD = "rubytailor/prewarm";
export const ACCEPT_COMMAND = "rubytailor.didAcceptCompletion";
const ACCEPT_TITLE = "rubytailor: accepted";

export interface Partial {
  id: unknown;
  seq: number;
  text: string;
  done: boolean;
  // Once the stream has sent text: the id its result will carry.
  suggestion_id?: string;
}

export interface StreamResult {
  id: unknown;
  text: string;
  verdict: string;
  source: string;
  cancelled: boolean;
  total_ms?: number;
  ttft_ms?: number | null;
  suggestion_id?: string;
  [key: string]: unknown;
}

/** What was reported to the server, for "Show Status and Stats". */
export interface EventCounts {
  shown: number;
  accepted: number;
  partial: number;
  dismissed: number;
}

// How long one provider call waits for the stream's first (or next) delta.
const WAIT_MS = 30_000;

class Stream {
  text = "";
  done = false;
  suggestionId: string | undefined;
  // Given to VS Code for display; reported as shown (once the id is known).
  displayed = false;
  shownReported = false;
  // Accepted or dismissed: nothing more to report.
  settled = false;
  acceptedLength = 0;
  readonly cts = new vscode.CancellationTokenSource();
  private waiters: Array<() => void> = [];

  constructor(
    readonly id: string,
    readonly uri: string,
    readonly start: vscode.Position,
    // The start line's text before the start: the stream is stale once it changes.
    readonly linePrefix: string,
  ) {}

  changed(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) {
      wake();
    }
  }

  /** Resolves on the next delta, the end of the stream, cancellation or a timeout. */
  wait(token: vscode.CancellationToken, ms: number): Promise<void> {
    return new Promise((resolve) => {
      if (token.isCancellationRequested || this.done) {
        resolve();
        return;
      }
      let finished = false;
      const finish = (): void => {
        if (finished) {
          return;
        }
        finished = true;
        clearTimeout(timer);
        subscription.dispose();
        resolve();
      };
      const timer = setTimeout(finish, ms);
      const subscription = token.onCancellationRequested(finish);
      this.waiters.push(finish);
    });
  }
}

export class StreamingInlineProvider implements vscode.InlineCompletionItemProvider, vscode.Disposable {
  private client: LanguageClient | undefined;
  private current: Stream | undefined;
  private counter = 0;
  private waiting = 0;
  private triggerQueued = false;
  private notifications: vscode.Disposable | undefined;
  private readonly subscriptions: vscode.Disposable[];
  readonly events: EventCounts = { shown: 0, accepted: 0, partial: 0, dismissed: 0 };
  private sending: Promise<void> = Promise.resolve();

  constructor(
    private readonly log: () => vscode.LogOutputChannel | undefined,
    private readonly onResult: (result: StreamResult) => void,
    private readonly enabled: () => boolean,
  ) {
    this.subscriptions = [
      vscode.window.onDidChangeTextEditorSelection((event) => this.onSelection(event)),
      vscode.window.onDidChangeActiveTextEditor((editor) => {
        if (this.current !== undefined && editor?.document.uri.toString() !== this.current.uri) {
          this.cancel();
        }
        this.prewarm(editor);
      }),
      vscode.workspace.onDidCloseTextDocument((document) => {
        if (document.uri.toString() === this.current?.uri) {
          this.cancel();
        }
      }),
      vscode.workspace.onDidChangeTextDocument((event) => this.onChange(event)),
    ];
  }

  attach(client: LanguageClient): void {
    this.detach();
    this.client = client;
    this.notifications = client.onNotification(PARTIAL_METHOD, (partial: Partial) =>
      this.onPartial(partial),
    );
  }

  detach(): void {
    this.cancel();
    this.notifications?.dispose();
    this.notifications = undefined;
    this.client = undefined;
  }

  /**
   * Stops the current stream (the server stops generating within a token). With
   * `dismissed`, a suggestion that was shown and not accepted is reported dismissed.
   */
  cancel(dismissed = false): void {
    const stream = this.current;
    this.current = undefined;
    if (stream !== undefined) {
      if (dismissed) {
        this.reportDismissed(stream);
      }
      if (!stream.done) {
        stream.cts.cancel();
      }
      stream.changed();
    }
  }

  dispose(): void {
    this.detach();
    for (const subscription of this.subscriptions) {
      subscription.dispose();
    }
  }

  async provideInlineCompletionItems(
    document: vscode.TextDocument,
    position: vscode.Position,
    _context: vscode.InlineCompletionContext,
    token: vscode.CancellationToken,
  ): Promise<vscode.InlineCompletionItem[] | undefined> {
    const client = this.client;
    if (client === undefined || !client.isRunning() || !this.enabled()) {
      return undefined;
    }
    let stream = this.current;
    if (stream !== undefined && !this.continues(stream, document, position)) {
      // Typed (or accepted) all of it, or something else: only the latter dismisses.
      const typed = this.typed(stream, document, position);
      this.cancel(typed === undefined || !typed.startsWith(stream.text));
      stream = undefined;
    }
    stream ??= this.start(client, document, position);
    this.log()?.trace(`inline request at ${position.line}:${position.character}: stream ${stream.id}`);
    const version = document.version;
    this.waiting += 1;
    try {
      for (;;) {
        if (token.isCancellationRequested || this.current !== stream || document.version !== version) {
          return undefined;
        }
        const typed = this.typed(stream, document, position);
        if (typed === undefined || !stream.text.startsWith(typed)) {
          return undefined;
        }
        const rest = stream.text.slice(typed.length);
        if (rest !== "") {
          const item = new vscode.InlineCompletionItem(rest, new vscode.Range(position, position));
          if (stream.suggestionId !== undefined) {
            // VS Code runs it when Tab accepts the item; the language client sends it on.
            item.command = {
              title: ACCEPT_TITLE,
              command: ACCEPT_COMMAND,
              arguments: [{ suggestion_id: stream.suggestionId }],
            };
          }
          stream.displayed = true;
          this.reportShown(stream);
          return [item];
        }
        if (stream.done) {
          return undefined;
        }
        await stream.wait(token, WAIT_MS);
      }
    } finally {
      this.waiting -= 1;
    }
  }

  /** What was typed since the stream started, or undefined when it no longer applies. */
  private typed(stream: Stream, document: vscode.TextDocument, position: vscode.Position): string | undefined {
    if (document.uri.toString() !== stream.uri || position.isBefore(stream.start)) {
      return undefined;
    }
    if (stream.start.line >= document.lineCount) {
      return undefined;
    }
    const line = document.lineAt(stream.start.line).text;
    if (line.slice(0, stream.start.character) !== stream.linePrefix) {
      return undefined;
    }
    return document.getText(new vscode.Range(stream.start, position)).replace(/\r\n/g, "\n");
  }

  /** Whether a request at `position` is served by `stream` rather than a new one. */
  private continues(stream: Stream, document: vscode.TextDocument, position: vscode.Position): boolean {
    const typed = this.typed(stream, document, position);
    if (typed === undefined || !stream.text.startsWith(typed)) {
      return false;
    }
    // Everything accepted or typed: ask for what comes next. (A finished stream with
    // nothing to offer is not asked again at the same place.)
    return !(stream.done && typed !== "" && typed.length === stream.text.length);
  }

  private start(client: LanguageClient, document: vscode.TextDocument, position: vscode.Position): Stream {
    this.counter += 1;
    const uri = document.uri.toString();
    const stream = new Stream(
      `vscode-${this.counter}`,
      uri,
      position,
      document.lineAt(position.line).text.slice(0, position.character),
    );
    this.current = stream;
    const params = {
      textDocument: { uri },
      position: client.code2ProtocolConverter.asPosition(position),
      id: stream.id,
    };
    client.sendRequest<StreamResult>(STREAM_METHOD, params, stream.cts.token).then(
      (result) => {
        stream.done = true;
        if (!result.cancelled && result.suggestion_id !== undefined) {
          this.identify(stream, result.suggestion_id);
        }
        const grew = !result.cancelled && result.text.startsWith(stream.text) && result.text !== stream.text;
        if (grew) {
          stream.text = result.text;
        }
        const answered = this.waiting > 0;
        stream.changed();
        if (grew && !answered) {
          this.queueTrigger(stream);
        }
        this.onResult(result);
      },
      (error: unknown) => {
        stream.done = true;
        stream.changed();
        if (!stream.cts.token.isCancellationRequested) {
          this.log()?.warn(`${STREAM_METHOD} failed: ${String(error)}`);
        }
      },
    );
    return stream;
  }

  private onPartial(partial: Partial): void {
    const stream = this.current;
    if (stream === undefined || partial.id !== stream.id) {
      return;
    }
    if (partial.text) {
      // Deltas simply concatenate; a newline may start one.
      stream.text += partial.text;
    }
    if (partial.suggestion_id !== undefined) {
      this.identify(stream, partial.suggestion_id);
    }
    if (partial.done) {
      stream.done = true;
    }
    // A provider call waiting on this stream answers with the new text itself; else
    // VS Code must be asked to ask again.
    const answered = this.waiting > 0;
    stream.changed();
    if (partial.text && !answered) {
      this.queueTrigger(stream);
    }
  }

  /** Ask VS Code to ask again, so that the ghost text shows the new delta. */
  private queueTrigger(stream: Stream): void {
    if (this.triggerQueued) {
      return;
    }
    this.triggerQueued = true;
    setTimeout(() => {
      this.triggerQueued = false;
      if (this.current !== stream || this.waiting > 0) {
        return;
      }
      const editor = vscode.window.activeTextEditor;
      if (editor === undefined || editor.document.uri.toString() !== stream.uri) {
        return;
      }
      const typed = this.typed(stream, editor.document, editor.selection.active);
      if (typed === undefined || !stream.text.startsWith(typed) || !editor.selection.isEmpty) {
        return;
      }
      // VS Code does not ask a provider again at the same place and document version
      // once it has an explicit answer there, so drop the shown text first. Both
      // commands go out at once: the old text is gone only for one round trip.
      const hide = vscode.commands.executeCommand("editor.action.inlineSuggest.hide");
      const trigger = vscode.commands.executeCommand("editor.action.inlineSuggest.trigger");
      void Promise.allSettled([hide, trigger]);
    }, 0);
  }

  private onSelection(event: vscode.TextEditorSelectionChangeEvent): void {
    this.prewarm(event.textEditor);
    const stream = this.current;
    if (stream === undefined || stream.done) {
      return;
    }
    if (event.textEditor.document.uri.toString() !== stream.uri) {
      return;
    }
    const selection = event.selections[0];
    const typed =
      event.selections.length === 1 && selection.isEmpty
        ? this.typed(stream, event.textEditor.document, selection.active)
        : undefined;
    // Typing what the suggestion says, or past what has arrived of it, keeps it.
    if (typed === undefined || !(stream.text.startsWith(typed) || typed.startsWith(stream.text))) {
      this.cancel(true);
    }
  }

  /** Tells the server where the cursor rests, so the first suggestion there starts warm
   * (it waits for the editor to be idle, and any request or edit goes first). */
  private prewarm(editor: vscode.TextEditor | undefined): void {
    if (editor === undefined || editor.document.languageId !== "ruby" || !this.enabled()) {
      return;
    }
    const selection = editor.selections[0];
    if (editor.selections.length !== 1 || !selection.isEmpty) {
      return;
    }
    this.notify(PREWARM_METHOD, {
      textDocument: { uri: editor.document.uri.toString() },
      position: { line: selection.active.line, character: selection.active.character },
    });
  }

  /** The accept command went to the server (extension.ts's middleware says so). */
  accepted(suggestionId: unknown): void {
    this.events.accepted += 1;
    const stream = this.current;
    if (stream !== undefined && stream.suggestionId === suggestionId) {
      stream.settled = true;
    }
  }

  /** An accept-word or accept-line: the next part of the suggestion inserted at once. */
  private onChange(event: vscode.TextDocumentChangeEvent): void {
    const stream = this.current;
    if (stream === undefined || !stream.displayed || stream.settled) {
      return;
    }
    if (event.document.uri.toString() !== stream.uri || event.contentChanges.length !== 1) {
      return;
    }
    const change = event.contentChanges[0];
    const inserted = change.text.replace(/\r\n/g, "\n");
    if (change.rangeLength !== 0 || inserted.length < 2 || change.range.start.isBefore(stream.start)) {
      return;
    }
    const before = this.typed(stream, event.document, change.range.start);
    if (before === undefined) {
      return;
    }
    const accepted = before + inserted;
    // All of what has arrived: a full accept, which the item's command reports.
    if (accepted.length < stream.text.length && stream.text.startsWith(accepted)) {
      if (accepted.length > stream.acceptedLength && stream.suggestionId !== undefined) {
        stream.acceptedLength = accepted.length;
        this.events.partial += 1;
        this.notify(PARTIAL_ACCEPT_METHOD, {
          suggestion_id: stream.suggestionId,
          acceptedLength: accepted.length,
        });
      }
    }
  }

  private identify(stream: Stream, suggestionId: string): void {
    if (stream.suggestionId === undefined) {
      stream.suggestionId = suggestionId;
      // Displayed before its id arrived (a server that sends it only with the result).
      this.reportShown(stream);
    }
  }

  private reportShown(stream: Stream): void {
    if (!stream.displayed || stream.shownReported || stream.suggestionId === undefined) {
      return;
    }
    stream.shownReported = true;
    this.events.shown += 1;
    this.notify(SHOW_METHOD, { suggestion_id: stream.suggestionId });
  }

  private reportDismissed(stream: Stream): void {
    if (!stream.shownReported || stream.settled || stream.suggestionId === undefined) {
      return;
    }
    stream.settled = true;
    this.events.dismissed += 1;
    this.notify(DISMISS_METHOD, { suggestion_id: stream.suggestionId });
  }

  private notify(method: string, params: object): void {
    const client = this.client;
    if (client === undefined || !client.isRunning()) {
      return;
    }
    // One after the other: each send may first wait for document changes to go out,
    // and a dismissal must not overtake the show it follows.
    this.sending = this.sending
      .then(() => client.sendNotification(method, params))
      .catch((error: unknown) => {
        this.log()?.warn(`${method} failed: ${String(error)}`);
      });
  }
}
