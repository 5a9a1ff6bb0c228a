import { pathToFileURL } from "node:url";
import { isModule, type ShoalModule } from "@shoal/sdk";
import type { ShoalConfig } from "./config/config.js";
import { listen, type RuntimeServer } from "./http/server.js";
import { createRuntime, type Runtime } from "./runtime.js";
import { createLocalStorage } from "./storage/local/local-storage.js";
import { createMemoryStorage } from "./storage/memory/memory-storage.js";

/**
 * Imports a module file by its `file:` URL. The default is Node's own
 * `import()`; `@shoal/cli` passes one that loads TypeScript through tsx, so
 * the runtime itself needs no TypeScript tooling.
 */
export type ModuleImporter = (url: string) => Promise<{ default?: unknown }>;

/**
 * Loads a module file (`export default module(...)`). Without an importer,
 * the file must be JavaScript: build TypeScript first, or run it with
 * `shoal dev` / `shoal serve` from `@shoal/cli`, which load `.ts` as is.
 */
export async function loadModule(path: string, importModule?: ModuleImporter): Promise<ShoalModule> {
  if (importModule === undefined && /\.[mc]?tsx?$/.test(path)) {
    throw new Error(
      `${path}: a TypeScript module needs a build step here; build it to JavaScript and point at the .js file, or run it with \`shoal dev\` or \`shoal serve\` from @shoal/cli, which load .ts as is`,
    );
  }
  const loaded = await (importModule ?? ((url: string) => import(url)))(pathToFileURL(path).href);
  // tsx may wrap the ES module's default export once more.
  let candidate = loaded.default;
  if (!isModule(candidate) && typeof candidate === "object" && candidate !== null && "default" in candidate) {
    candidate = (candidate as { default: unknown }).default;
  }
  if (!isModule(candidate)) {
    throw new Error(
      `${path}: the default export is not a Shoal module; end the file with \`export default module(implement(XFunction, x), ...)\``,
    );
  }
  return candidate;
}

/** A node started from a config: its runtime and its listening ingress. */
export interface RunningNode {
  readonly runtime: Runtime;
  readonly server: RuntimeServer;
  close(): Promise<void>;
}

/** Options of `startNode` beyond the config. */
export interface StartNodeOptions {
  /**
   * Write messages to any egress name as JSON lines on stdout, configured or
   * not, as `shoal dev` does. Default `false`: only the names under `egress`
   * in the config (and `stdout`) exist, and an invocation that emits to
   * another name fails.
   */
  readonly anyEgressToStdout?: boolean;
}

/** Starts a node as `shoal dev` and `shoal serve` do. */
export async function startNode(config: ShoalConfig, functions: ShoalModule, options: StartNodeOptions = {}): Promise<RunningNode> {
  const storage =
    config.storage.backend === "memory"
      ? createMemoryStorage()
      : await createLocalStorage({ directory: config.storage.directory, fsync: config.storage.fsync });
  let runtime: Runtime;
  try {
    runtime = createRuntime({
      functions,
      storage,
      shards: config.shards,
      retry: config.retry,
      memoRetentionMs: config.memoRetentionMs,
      invokeTimeoutMs: config.invokeTimeoutMs,
      snapshotEvery: config.snapshotEvery,
      snapshotLogBytes: config.snapshotLogBytes,
      snapshotAfterMs: config.snapshotAfterMs,
      maxConcurrentInvocations: config.maxConcurrentInvocations,
      maxRequestBytes: config.ingress.maxRequestBytes,
      ignoreUnknownJsonFields: config.ingress.ignoreUnknownJsonFields,
      // Every egress type in shoal.yaml is stdout for now.
      egress: Object.fromEntries(Object.keys(config.egress).map((name) => [name, "stdout" as const])),
      defaultEgress: options.anyEgressToStdout ? "stdout" : undefined,
      logger: config.log.level,
    });
  } catch (err) {
    await storage.close().catch(() => {});
    throw err;
  }
  // A node that fails to start releases what it took (the local store's lock, the shards), so the caller may retry.
  let server: RuntimeServer;
  try {
    await runtime.start();
    const { host, port, headersTimeoutMs, idleTimeoutMs, shutdownGraceMs } = config.ingress;
    server = await listen(runtime, { host, port, headersTimeoutMs, idleTimeoutMs, shutdownGraceMs });
  } catch (err) {
    await runtime.close().catch(() => {});
    throw err;
  }
  return {
    runtime,
    server,
    async close() {
      await server.close();
      await runtime.close();
    },
  };
}
