import { parseArgs } from "node:util";
import type { Implementation, ShoalModule } from "@shoal/sdk";
import { ConfigError, loadConfig, type ShoalConfig } from "./config/config.js";
import { installProcessGuard } from "./observe/process-guard.js";
import { loadModule, type ModuleImporter, type RunningNode, type StartNodeOptions, startNode } from "./run-node.js";

/** Options of `serveUntilSignal`. */
export interface ServeOptions extends StartNodeOptions {
  /** The line written to stdout once the node listens (scripts and tests wait for it). */
  readonly banner: (url: string) => string;
  /** Told when closing on a signal fails; the process then exits 1. Default: one line on stderr. */
  readonly onCloseError?: (err: unknown) => void;
}

/**
 * Starts a node, installs the process guard, and on SIGINT or SIGTERM closes
 * it (requests in flight finish, the store is closed) and exits 0.
 */
export function serveUntilSignal(
  config: ShoalConfig,
  functions: ShoalModule | readonly Implementation[],
  options: ServeOptions,
): Promise<RunningNode> {
  return serveStarting(() => startNode(config, functions, options), options);
}

/**
 * Installs the SIGINT and SIGTERM handlers, then runs `start`, and prints the
 * banner once it has started. The handlers come first: a supervisor that
 * stops the node as soon as it sees the banner (or while it starts) must get
 * a clean close and exit 0, never Node's default end by signal. A signal
 * during the start closes the node once it has started; a start that fails
 * is its caller's to report.
 */
async function serveStarting(start: () => Promise<RunningNode>, options: ServeOptions): Promise<RunningNode> {
  let stopping = false;
  const stop = async () => {
    stopping = true;
    let node: RunningNode;
    try {
      node = await starting;
    } catch {
      return;
    }
    try {
      await node.close();
    } catch (err) {
      (options.onCloseError ?? ((e) => process.stderr.write(`closing the node failed: ${describe(e)}\n`)))(err);
      process.exit(1);
    }
    process.exit(0);
  };
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
  const starting = start();
  const node = await starting;
  installProcessGuard(node.runtime.logger);
  if (!stopping) process.stdout.write(options.banner(node.server.url));
  return node;
}

/** Options of `serveConfig`. */
export interface ServeConfigOptions {
  /** The command's name in the banner: `<command>: listening at <url>`. */
  readonly command: string;
  /** How to import `functions.module`; `@shoal/cli` passes one that loads TypeScript. Default: Node's `import()`. */
  readonly importModule?: ModuleImporter;
  /** See `ServeOptions.onCloseError`. */
  readonly onCloseError?: (err: unknown) => void;
}

/**
 * Serves a node as the `shoal.yaml` at `configPath` configures it, until
 * SIGINT or SIGTERM: what `shoal-node` and `shoal serve` do. Its functions
 * run in this process (`functions.module`), in remote endpoints
 * (`functions.remote`, no user code here), or both.
 */
export async function serveConfig(configPath: string, options: ServeConfigOptions): Promise<RunningNode> {
  const config = loadConfig(configPath);
  if (config.functions.module === undefined && config.functions.remote.length === 0) {
    throw new ConfigError(
      `${configPath}: functions: required: functions.module (a module file to run here) or functions.remote (endpoints that serve the functions)`,
    );
  }
  const serveOptions: ServeOptions = { banner: (url) => `${options.command}: listening at ${url}\n`, onCloseError: options.onCloseError };
  // The module's import is part of the start: a signal while it loads closes the node too.
  return serveStarting(async () => {
    const module = config.functions.module;
    const functions = module === undefined ? [] : await loadModule(module, options.importModule);
    return startNode(config, functions, serveOptions);
  }, serveOptions);
}

function describe(err: unknown): string {
  if (err instanceof ConfigError) return err.message;
  return err instanceof Error ? `${err.name}: ${err.message}` : String(err);
}

const usage = `Usage: shoal-node [--config <file>]

Serves a node as the config file (default shoal.yaml) configures it, until
SIGINT or SIGTERM: the container's entry point. Its functions run in remote
endpoints (functions.remote, with functions.descriptors), in this process
(functions.module, which must be JavaScript; @shoal/cli's \`shoal serve\` also
loads TypeScript), or both.
`;

/** The `shoal-node` command (bin/shoal-node.js): `shoal-node [-c|--config shoal.yaml]`. */
export async function shoalNodeMain(args: readonly string[]): Promise<void> {
  const fail = (message: string): never => {
    process.stderr.write(`shoal-node: ${message}\n`);
    process.exit(1);
  };
  let configPath: string;
  try {
    const { values } = parseArgs({
      args: [...args],
      options: { config: { type: "string", short: "c", default: "shoal.yaml" }, help: { type: "boolean", short: "h" } },
    });
    if (values.help) {
      process.stdout.write(usage);
      return;
    }
    configPath = values.config;
  } catch (err) {
    return fail(`${(err as Error).message}\n${usage}`);
  }
  try {
    await serveConfig(configPath, { command: "shoal-node", onCloseError: (err) => fail(describe(err)) });
  } catch (err) {
    fail(describe(err));
  }
}
