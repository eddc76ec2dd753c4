// rubytailor for VS Code: starts `rubytailor serve` over stdio for Ruby files and
// shows its suggestions as ghost text that grows while the model generates.
//
// vscode-languageclient does the LSP plumbing (document sync, the one AI completion
// item, Prism diagnostics). Ghost text comes from streaming.ts, which uses the
// server's rubytailor/inlineStream instead of the client's built-in (non-streaming)
// inline completion. The status bar item and the commands live here, except the
// personalization commands: the client registers those from the server's
// executeCommandProvider, and the middleware below shows their answers. So it does
// rubytailor.didAcceptCompletion, the command of every ghost-text item: VS Code runs
// it on accept and the server records the suggestion as accepted (streaming.ts).

import * as vscode from "vscode";
import {
  LanguageClient,
  type LanguageClientOptions,
  type ServerOptions,
  State,
  TransportKind,
} from "vscode-languageclient/node";
import type { Readable } from "node:stream";
import * as readline from "node:readline";

import { ACCEPT_COMMAND, StreamingInlineProvider, type StreamResult } from "./streaming";

// The server's command with this project's acceptance figures (rubytailor/protocol.py).
const STATS_COMMAND = "rubytailor.stats";

const SECTION = "rubytailor";
const STATUS_METHOD = "rubytailor/status";

// The server's settings: the fields of Settings in rubytailor/config.py, camelCase.
// Only these go to the server (initializationOptions and workspace/configuration).
export const SERVER_SETTINGS = [
  "enable",
  "backend",
  "modelPath",
  "maxLines",
  "maxTokens",
  "maxPromptTokens",
  "maxFileBytes",
  "diagnostics",
  "threads",
  "projectMemory",
  "exclude",
  "minConfidence",
  "personalization",
  "personalizationMinChangedKb",
  "personalizationIntervalHours",
  "personalizationIdleSeconds",
  "personalizationBudgetMinutes",
  "events",
  "eventsIncludeText",
  "prewarm",
] as const;

// Settings that only change how the server process is started.
const LAUNCH_SETTINGS = ["serverCommand", "serverArgs"] as const;

interface Personalization {
  state?: string;
  reason?: string;
  adapter?: string | null;
  scheduler?: { why_not?: string };
  last_message?: string;
}

interface ServerStatus {
  model_id?: string | null;
  backend?: string | null;
  model_error?: string | null;
  prism_error?: string | null;
  project_memory?: { state?: string; reason?: string; files?: number; tokens?: number };
  personalization?: Personalization;
  [key: string]: unknown;
}

// What every rubytailor.personalize* command answers.
interface CommandAnswer {
  message?: string;
  status?: Personalization;
}

let client: LanguageClient | undefined;
let output: vscode.LogOutputChannel | undefined;
let trace: vscode.LogOutputChannel | undefined;
let statusItem: vscode.StatusBarItem | undefined;
let provider: StreamingInlineProvider | undefined;
let lastStatus: ServerStatus | undefined;
let lastResult: StreamResult | undefined;
let statusTimer: NodeJS.Timeout | undefined;
let stats = { streams: 0, shown: 0, cancelled: 0 };

/**
 * The server's settings that the user set (user, remote, workspace or folder
 * settings), as one camelCase object for one resource's scope. Defaults are left out:
 * the server's own defaults apply, even where package.json's differ.
 */
export function serverSettings(scope?: vscode.Uri): Record<string, unknown> {
  const config = vscode.workspace.getConfiguration(SECTION, scope);
  const settings: Record<string, unknown> = {};
  for (const key of SERVER_SETTINGS) {
    const info = config.inspect<unknown>(key);
    const set = [
      info?.globalValue,
      info?.workspaceValue,
      info?.workspaceFolderValue,
      info?.globalLanguageValue,
      info?.workspaceLanguageValue,
      info?.workspaceFolderLanguageValue,
    ].some((value) => value !== undefined);
    const value = config.get<unknown>(key);
    // Unset (null) threads and an empty modelPath mean "the server's default".
    if (!set || value === undefined || value === null || value === "") {
      continue;
    }
    settings[key] = value;
  }
  return settings;
}

/** The adapter served and what the scheduler waits for, in one line. */
function personalizationText(p: Personalization | undefined): string {
  if (p === undefined) {
    return "?";
  }
  if (p.state === "off") {
    return `off${p.reason ? ` (${p.reason})` : ""}`;
  }
  const adapter = p.adapter ? `adapter ${p.adapter}` : "no adapter yet";
  // why_not is empty exactly when a run is due.
  return `${adapter}; ${p.scheduler?.why_not || "a run is due"}`;
}

function launch(): { command: string; args: string[] } {
  const config = vscode.workspace.getConfiguration(SECTION);
  const command = config.get<string>("serverCommand", "rubytailor").trim() || "rubytailor";
  const args = config.get<string[]>("serverArgs", ["serve"]);
  return { command, args };
}

// "2026-12-01 20:26:10,123 INFO rubytailor.lsp.server: message" (lsp/serve.py LOG_FORMAT)
const LOG_LINE = /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) (.*)$/;

/** Server stderr into the log channel at the level the server logged it at. */
function pipeServerLog(input: Readable, channel: vscode.LogOutputChannel): void {
  let level = "INFO";
  readline
    .createInterface({ input, crlfDelay: Infinity, terminal: false, historySize: 0 })
    .on("line", (line: string) => {
      const match = LOG_LINE.exec(line);
      // Lines without a header (tracebacks) continue the previous record.
      const text = match ? `[server] ${match[2]}` : `[server] ${line}`;
      if (match) {
        level = match[1];
      }
      switch (level) {
        case "DEBUG":
          channel.debug(text);
          break;
        case "INFO":
          channel.info(text);
          break;
        case "WARNING":
          channel.warn(text);
          break;
        default:
          channel.error(text);
      }
    });
}

async function startClient(context: vscode.ExtensionContext): Promise<void> {
  output ??= vscode.window.createOutputChannel("rubytailor", { log: true });
  trace ??= vscode.window.createOutputChannel("rubytailor (LSP trace)", { log: true });
  const clientOptions: LanguageClientOptions = {
    documentSelector: [
      { scheme: "file", language: "ruby" },
      { scheme: "untitled", language: "ruby" },
    ],
    initializationOptions: serverSettings(),
    outputChannel: output,
    traceOutputChannel: trace,
    stdioOptions: {
      stdout: (input, channel) => pipeServerLog(input, channel),
      stderr: (input, channel) => pipeServerLog(input, channel),
    },
    middleware: {
      // The personalization commands: say what the server answered, and refresh the
      // status bar (pause, resume and rollback change what it shows).
      executeCommand: async (command, args, next) => {
        if (command === ACCEPT_COMMAND) {
          // Run by VS Code when a suggestion is accepted: nothing to show.
          const [argument] = args as Array<{ suggestion_id?: unknown } | undefined>;
          provider?.accepted(argument?.suggestion_id);
          return next(command, args);
        }
        const answer: unknown = await next(command, args);
        if (typeof answer === "object" && answer !== null) {
          const { message, status } = answer as CommandAnswer;
          // The status command answers no message: the status is its answer.
          const text =
            message ||
            `personalization: ${personalizationText(status)}` +
              (status?.last_message ? `; last run: ${status.last_message}` : "");
          void vscode.window.showInformationMessage(`rubytailor: ${text}`);
          void requestStatus();
        }
        return answer;
      },
      // Ghost text comes from the streaming provider; the client's own inline
      // completion would ask the model a second time for every keystroke.
      provideInlineCompletionItems: () => undefined,
      workspace: {
        // The server asks for the "rubytailor" section: answer with its settings only
        // (not serverCommand, serverArgs or trace.server, which it does not know).
        configuration: async (params, token, next) => {
          const answers = await next(params, token);
          if (!Array.isArray(answers)) {
            return answers;
          }
          return params.items.map((item, index) =>
            item.section === SECTION
              ? serverSettings(item.scopeUri ? vscode.Uri.parse(item.scopeUri) : undefined)
              : answers[index],
          );
        },
        // The server registered for changes of its section: send no settings, so it
        // pulls them (through `configuration` above).
        didChangeConfiguration: (_sections, next) => next(undefined),
      },
    },
  };
  const { command, args } = launch();
  // TransportKind.stdio makes the client append --stdio (rubytailor serve accepts it).
  const serverOptions: ServerOptions = { command, args, transport: TransportKind.stdio };
  output.info(`starting ${command} ${args.join(" ")}`);
  const started = new LanguageClient(SECTION, "rubytailor", serverOptions, clientOptions);
  client = started;
  started.onDidChangeState((event) => {
    if (event.newState === State.Stopped) {
      lastStatus = undefined;
    }
    updateStatusItem();
  });
  updateStatusItem();
  try {
    await started.start();
  } catch (error) {
    output.error(`could not start "${command}": ${String(error)}`);
    void vscode.window.showErrorMessage(
      `rubytailor: could not start "${command}" (${String(error)}). ` +
        "Install rubytailor and set rubytailor.serverCommand to its executable, " +
        "e.g. /path/to/rubytailor/.venv/bin/rubytailor.",
    );
    updateStatusItem();
    return;
  }
  if (client !== started) {
    return;
  }
  provider?.attach(started);
  output.info(`server started: ${command} ${args.join(" ")}`);
  void pollStatus(context);
}

async function stopClient(): Promise<void> {
  const running = client;
  client = undefined;
  provider?.detach();
  if (statusTimer !== undefined) {
    clearTimeout(statusTimer);
    statusTimer = undefined;
  }
  if (running !== undefined && running.isRunning()) {
    await running.stop();
  }
  updateStatusItem();
}

async function requestStatus(): Promise<ServerStatus | undefined> {
  const running = client;
  if (running === undefined || !running.isRunning()) {
    return undefined;
  }
  try {
    lastStatus = await running.sendRequest<ServerStatus>(STATUS_METHOD, {});
  } catch (error) {
    output?.warn(`${STATUS_METHOD} failed: ${String(error)}`);
  }
  updateStatusItem();
  return lastStatus;
}

/**
 * Poll the status until the model is loaded and the project memory has settled; log
 * each ("ready: model ..." first: suggestions work from then on).
 */
async function pollStatus(
  context: vscode.ExtensionContext,
  delayMs = 250,
  said = { model: false },
): Promise<void> {
  statusTimer = undefined;
  const status = await requestStatus();
  if (status === undefined || client === undefined) {
    return;
  }
  const loaded = typeof status.model_id === "string" && status.model_id !== "none";
  if (!said.model && status.model_error) {
    said.model = true;
    output?.warn(`no model: ${status.model_error}`);
  } else if (!said.model && loaded) {
    said.model = true;
    output?.info(`ready: model ${status.model_id} (${status.backend ?? "?"})`);
  }
  const memory = status.project_memory;
  const settled = memory === undefined || memory.state === "ready" || memory.state === "off";
  if (said.model && settled) {
    output?.info(
      memory?.state === "ready"
        ? `project memory ready: ${memory.files ?? 0} files, ${memory.tokens ?? 0} tokens`
        : `project memory ${memory?.state ?? "unknown"}${memory?.reason ? ` (${memory.reason})` : ""}`,
    );
    return;
  }
  statusTimer = setTimeout(
    () => void pollStatus(context, Math.min(delayMs * 2, 5000), said),
    delayMs,
  );
}

function enabledSetting(): boolean {
  return vscode.workspace.getConfiguration(SECTION).get<boolean>("enable", true);
}

function updateStatusItem(): void {
  if (statusItem === undefined) {
    return;
  }
  const running = client?.state === State.Running;
  const enabled = enabledSetting();
  let icon = "$(sparkle)";
  if (!enabled) {
    icon = "$(circle-slash)";
  } else if (client === undefined || client.state === State.Stopped) {
    icon = "$(error)";
  } else if (!running || lastStatus === undefined || lastStatus.model_id === "none") {
    icon = "$(sync~spin)";
  } else if (lastStatus.model_error) {
    icon = "$(warning)";
  }
  const latency = lastResult?.total_ms;
  const detail = !enabled ? " off" : latency !== undefined ? ` ${Math.round(latency)} ms` : "";
  statusItem.text = `${icon} rubytailor${detail}`;
  const memory = lastStatus?.project_memory;
  const memoryText =
    memory === undefined
      ? "?"
      : memory.state === "off"
        ? `off${memory.reason ? ` (${memory.reason})` : ""}`
        : `${memory.state ?? "?"}, ${memory.files ?? 0} files, ${memory.tokens ?? 0} tokens`;
  const lines = [
    `**rubytailor** ${enabled ? "enabled" : "disabled"}${running ? "" : " (server not running)"}`,
    "",
    `- Model: ${lastStatus?.model_id ?? "?"}${lastStatus?.model_error ? ` (error: ${lastStatus.model_error})` : ""}`,
    `- Backend: ${lastStatus?.backend ?? "?"}`,
    `- Project memory: ${memoryText}`,
    `- Personalization: ${personalizationText(lastStatus?.personalization)}`,
    `- Last suggestion: ${latency !== undefined ? `${Math.round(latency)} ms` : "none yet"}`,
    "",
    "Click for the server's full status.",
  ];
  statusItem.tooltip = new vscode.MarkdownString(lines.join("\n"));
  statusItem.show();
}

async function setEnabled(value: boolean, target: vscode.ConfigurationTarget): Promise<void> {
  if (target === vscode.ConfigurationTarget.Workspace && vscode.workspace.workspaceFolders === undefined) {
    void vscode.window.showWarningMessage("rubytailor: no workspace is open; changing the user setting.");
    target = vscode.ConfigurationTarget.Global;
  }
  await vscode.workspace.getConfiguration(SECTION).update("enable", value, target);
  if (!value) {
    provider?.cancel();
  }
  updateStatusItem();
}

/** This project's acceptance figures from the server's events file (`rubytailor stats`). */
async function requestAcceptance(): Promise<string> {
  const running = client;
  if (running === undefined || !running.isRunning()) {
    return "the server is not running";
  }
  try {
    const answer = await running.sendRequest<{ text?: string }>("workspace/executeCommand", {
      command: STATS_COMMAND,
      arguments: [],
    });
    return answer?.text ?? "";
  } catch (error) {
    return `${STATS_COMMAND} failed: ${String(error)}`;
  }
}

async function showStats(): Promise<void> {
  const status = await requestStatus();
  const acceptance = await requestAcceptance();
  const details = JSON.stringify(
    {
      server: status ?? "not running",
      client: { ...stats, reported: provider?.events ?? null, lastSuggestion: lastResult ?? null },
    },
    null,
    2,
  );
  const content = `${acceptance}\n\nStatus (rubytailor/status) and this window's counters:\n${details}\n`;
  const document = await vscode.workspace.openTextDocument({ language: "plaintext", content });
  await vscode.window.showTextDocument(document, { preview: true });
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  stats = { streams: 0, shown: 0, cancelled: 0 };
  statusItem = vscode.window.createStatusBarItem("rubytailor.status", vscode.StatusBarAlignment.Right, 100);
  statusItem.name = "rubytailor";
  statusItem.command = "rubytailor.showStats";
  provider = new StreamingInlineProvider(
    () => output,
    (result) => {
      stats.streams += 1;
      if (result.cancelled) {
        stats.cancelled += 1;
        return;
      }
      if (result.text) {
        stats.shown += 1;
      }
      // The latency shown is that of the last stream that ran to its end.
      lastResult = result;
      updateStatusItem();
    },
    () => enabledSetting(),
  );
  const restart = async (): Promise<void> => {
    await stopClient();
    await startClient(context);
  };
  context.subscriptions.push(
    statusItem,
    provider,
    vscode.languages.registerInlineCompletionItemProvider(
      [
        { scheme: "file", language: "ruby" },
        { scheme: "untitled", language: "ruby" },
      ],
      provider,
    ),
    vscode.commands.registerCommand("rubytailor.restartServer", restart),
    vscode.commands.registerCommand("rubytailor.showOutput", () => output?.show()),
    vscode.commands.registerCommand("rubytailor.showStats", showStats),
    // Escape while ghost text is shown: stop the stream too, or its next delta would
    // bring the suggestion back.
    vscode.commands.registerCommand("rubytailor.dismiss", async () => {
      provider?.cancel(true);
      await vscode.commands.executeCommand("editor.action.inlineSuggest.hide");
    }),
    vscode.commands.registerCommand("rubytailor.enable", () =>
      setEnabled(true, vscode.ConfigurationTarget.Global),
    ),
    vscode.commands.registerCommand("rubytailor.disable", () =>
      setEnabled(false, vscode.ConfigurationTarget.Global),
    ),
    vscode.commands.registerCommand("rubytailor.enableWorkspace", () =>
      setEnabled(true, vscode.ConfigurationTarget.Workspace),
    ),
    vscode.commands.registerCommand("rubytailor.disableWorkspace", () =>
      setEnabled(false, vscode.ConfigurationTarget.Workspace),
    ),
    vscode.workspace.onDidChangeConfiguration(async (event) => {
      if (!event.affectsConfiguration(SECTION)) {
        return;
      }
      // Other settings reach the running server as it pulls them; a new command line
      // needs a new process.
      if (LAUNCH_SETTINGS.some((key) => event.affectsConfiguration(`${SECTION}.${key}`))) {
        await restart();
        return;
      }
      if (event.affectsConfiguration(`${SECTION}.enable`) && !enabledSetting()) {
        provider?.cancel();
      }
      updateStatusItem();
      // The model or the project memory may be reloading.
      if (statusTimer !== undefined) {
        clearTimeout(statusTimer);
      }
      statusTimer = setTimeout(() => void pollStatus(context), 500);
    }),
  );
  await startClient(context);
}

export async function deactivate(): Promise<void> {
  await stopClient();
  output?.dispose();
  output = undefined;
  trace?.dispose();
  trace = undefined;
}
