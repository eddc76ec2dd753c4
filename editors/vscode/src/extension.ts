// rubytailor for VS Code: starts `rubytailor serve` over stdio for Ruby files.
//
// Everything else comes from vscode-languageclient: since 10.0 inline completion
// (textDocument/inlineCompletion, LSP 3.18) is a built-in feature, so ghost text,
// the one AI completion item and Prism diagnostics need no code here.

import * as vscode from "vscode";
import {
  LanguageClient,
  type LanguageClientOptions,
  type ServerOptions,
  TransportKind,
} from "vscode-languageclient/node";

const SECTION = "rubytailor";

// Settings the server reads (initializationOptions and workspace/configuration).
const SERVER_SETTINGS = [
  "enable",
  "backend",
  "modelPath",
  "maxLines",
  "maxTokens",
  "maxPromptTokens",
  "maxFileBytes",
  "diagnostics",
  "threads",
] as const;

// Settings that only change how the server process is started.
const LAUNCH_SETTINGS = ["serverCommand", "serverArgs"] as const;

let client: LanguageClient | undefined;
let output: vscode.LogOutputChannel | undefined;

/** The server's settings as one camelCase object (the initializationOptions). */
function serverSettings(): Record<string, unknown> {
  const config = vscode.workspace.getConfiguration(SECTION);
  const settings: Record<string, unknown> = {};
  for (const key of SERVER_SETTINGS) {
    const value = config.get<unknown>(key);
    // Unset (null) threads and an empty modelPath mean "the server's default".
    if (value === undefined || value === null || value === "") {
      continue;
    }
    settings[key] = value;
  }
  return settings;
}

function launch(): { command: string; args: string[] } {
  const config = vscode.workspace.getConfiguration(SECTION);
  const command = config.get<string>("serverCommand", "rubytailor").trim() || "rubytailor";
  const args = config.get<string[]>("serverArgs", ["serve"]);
  return { command, args };
}

async function startClient(): Promise<void> {
  output ??= vscode.window.createOutputChannel("rubytailor", { log: true });
  const clientOptions: LanguageClientOptions = {
    documentSelector: [
      { scheme: "file", language: "ruby" },
      { scheme: "untitled", language: "ruby" },
    ],
    initializationOptions: serverSettings(),
    // Pushes workspace/didChangeConfiguration when anything under "rubytailor"
    // changes; the client also answers the server's workspace/configuration pulls.
    synchronize: { configurationSection: SECTION },
    outputChannel: output,
  };
  const { command, args } = launch();
  const serverOptions: ServerOptions = { command, args, transport: TransportKind.stdio };
  client = new LanguageClient(SECTION, "rubytailor", serverOptions, clientOptions);
  try {
    await client.start();
  } catch (error) {
    void vscode.window.showErrorMessage(
      `rubytailor: could not start "${command}" (${String(error)}). ` +
        "Install rubytailor and set rubytailor.serverCommand to its executable, " +
        "e.g. /path/to/rubytailor/.venv/bin/rubytailor.",
    );
  }
}

async function stopClient(): Promise<void> {
  const running = client;
  client = undefined;
  if (running !== undefined && running.isRunning()) {
    await running.stop();
  }
}

async function restartClient(): Promise<void> {
  await stopClient();
  await startClient();
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  context.subscriptions.push(
    vscode.commands.registerCommand("rubytailor.restartServer", restartClient),
    vscode.commands.registerCommand("rubytailor.showOutput", () => output?.show()),
    vscode.workspace.onDidChangeConfiguration(async (event) => {
      // Other settings reach the running server through synchronize; a new command
      // line needs a new process.
      if (LAUNCH_SETTINGS.some((key) => event.affectsConfiguration(`${SECTION}.${key}`))) {
        await restartClient();
      }
    }),
  );
  await startClient();
}

export async function deactivate(): Promise<void> {
  await stopClient();
  output?.dispose();
  output = undefined;
}
