// The one table of defaults (packages/runtime/src/config/defaults.ts): what
// `shoal dev --help` shows, what an empty shoal.yaml gives and what
// createRuntime uses must be the table's values, so none can drift alone.
import { hostname } from "node:os";
import { createMemoryStorage, createRuntime, defaults, validateConfig } from "@shoal/runtime";
import type { Command } from "commander";
import { describe, expect, it } from "vitest";
import { createCli } from "./cli.js";

/** A command's help as `shoal <command> --help` prints it, with line wrapping undone. */
function helpOf(...path: string[]): string {
  let command: Command | undefined = createCli();
  for (const name of path) command = command?.commands.find((c) => c.name() === name);
  if (command === undefined) throw new Error(`no command ${path.join(" ")}`);
  return command.helpInformation().replace(/\s+/g, " ");
}

describe("the table of defaults", () => {
  it("gives shoal dev's --help defaults", () => {
    const help = helpOf("dev");
    expect(help).toContain(`--port <port> ingress port (default: ${defaults.ingress.port})`);
    expect(help).toContain(`--host <host> ingress interface (default: "${defaults.ingress.host}")`);
    expect(help).toContain(`--data-dir <dir> where the local store keeps its files (default: "${defaults.storage.directory}")`);
    expect(help).toContain(`--shards <n> number of shards (default: ${defaults.shards})`);
    expect(help).toContain(
      `--max-request-bytes <bytes> largest request body the ingress accepts (default: ${defaults.ingress.maxRequestBytes})`,
    );
    expect(help).toContain(`--log-level <level> debug, info, warn, error or silent (default: "${defaults.logLevel}")`);
  });

  it("gives the address and listing limit of the commands that ask a node", () => {
    const url = `(default: "http://${defaults.ingress.host}:${defaults.ingress.port}")`;
    for (const command of [["call"], ["status"], ["state", "get"], ["state", "list"], ["dead-letters", "list"]]) {
      expect(helpOf(...command)).toContain(`--url <url> the runtime's address ${url}`);
    }
    expect(helpOf("state", "list")).toContain(`(default: ${defaults.adminListLimit})`);
    expect(helpOf("dead-letters", "list")).toContain(`(default: ${defaults.adminListLimit})`);
  });

  it("gives every default of an empty shoal.yaml", () => {
    expect(validateConfig({}, "/srv/app")).toEqual({
      shards: defaults.shards,
      ingress: { ...defaults.ingress },
      storage: { backend: defaults.storage.backend, directory: `/srv/app/${defaults.storage.directory}`, fsync: defaults.storage.fsync },
      cluster: { nodeId: hostname().replace(/[^A-Za-z0-9_-]/g, "-"), leaseMs: defaults.cluster.leaseMs },
      functions: { module: undefined, descriptors: undefined, remote: [] },
      retry: { ...defaults.retry },
      memoRetentionMs: defaults.memoRetentionMs,
      invokeTimeoutMs: defaults.invokeTimeoutMs,
      callResendMs: defaults.callResendMs,
      instanceCacheSize: defaults.instanceCacheSize,
      instanceIdleMs: defaults.instanceIdleMs,
      maxConcurrentInvocations: defaults.maxConcurrentInvocations,
      egress: {},
      log: { level: defaults.logLevel },
      warnings: [],
    });
  });

  it("gives createRuntime's defaults", async () => {
    const runtime = createRuntime({ functions: [], storage: createMemoryStorage(), logger: "silent" });
    try {
      expect(runtime.shards).toBe(defaults.shards);
      expect(runtime.maxRequestBytes).toBe(defaults.ingress.maxRequestBytes);
      expect(runtime.ignoreUnknownJsonFields).toBe(defaults.ingress.ignoreUnknownJsonFields);
    } finally {
      await runtime.close();
    }
  });
});
