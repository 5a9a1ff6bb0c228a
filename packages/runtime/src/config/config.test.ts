import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ConfigError, loadConfig, type ShoalConfig, validateConfig } from "./config.js";

const base = "/srv/app";

/** The error `validateConfig` throws for `raw`. */
function errorOf(raw: unknown): ConfigError {
  try {
    validateConfig(raw, base);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error(`expected ${JSON.stringify(raw)} to be refused`);
}

describe("validateConfig", () => {
  const defaults: ShoalConfig = {
    shards: 64,
    ingress: {
      host: "127.0.0.1",
      port: 8080,
      maxRequestBytes: 4 * 1024 * 1024,
      ignoreUnknownJsonFields: false,
      headersTimeoutMs: 10_000,
      idleTimeoutMs: 60_000,
      shutdownGraceMs: 5_000,
    },
    storage: { backend: "local", directory: "/srv/app/.shoal", fsync: true },
    functions: { module: undefined },
    retry: { maxAttempts: 5, initialDelayMs: 100, maxDelayMs: 5_000 },
    memoRetentionMs: 24 * 3600_000,
    invokeTimeoutMs: 60_000,
    snapshotEvery: 10_000,
    snapshotLogBytes: 32 * 1024 * 1024,
    snapshotAfterMs: 600_000,
    maxConcurrentInvocations: 1024,
    egress: {},
    log: { level: "info" },
  };

  it("gives every field its default", () => {
    expect(validateConfig({}, base)).toEqual(defaults);
    // an empty file parses to null; empty sections to null too
    expect(validateConfig(null, base)).toEqual(defaults);
    expect(validateConfig(undefined, base)).toEqual(defaults);
    expect(validateConfig({ ingress: null, storage: null, retry: null, log: null, egress: null, functions: null }, base)).toEqual(defaults);
  });

  it("resolves relative paths against the base folder, and keeps absolute ones", () => {
    const config = validateConfig({ storage: { directory: "data/shoal" }, functions: { module: "./dist/module.js" } }, base);
    expect(config.storage).toEqual({ backend: "local", directory: "/srv/app/data/shoal", fsync: true });
    expect(config.functions.module).toBe("/srv/app/dist/module.js");
    const absolute = validateConfig({ storage: { directory: "/var/lib/shoal" }, functions: { module: "/opt/fns/module.js" } }, base);
    expect(absolute.storage).toMatchObject({ directory: "/var/lib/shoal" });
    expect(absolute.functions.module).toBe("/opt/fns/module.js");
  });

  it("takes every key", () => {
    const config = validateConfig(
      {
        shards: 8,
        ingress: {
          host: "0.0.0.0",
          port: 0,
          maxRequestBytes: 1024,
          ignoreUnknownJsonFields: true,
          headersTimeoutMs: 1,
          idleTimeoutMs: 2,
          shutdownGraceMs: 0,
        },
        storage: { backend: "local", directory: "/data", fsync: false },
        functions: { module: "m.js" },
        retry: { maxAttempts: 1, initialDelayMs: 0, maxDelayMs: 0 },
        memoRetentionMs: 60_000,
        invokeTimeoutMs: 5_000,
        snapshotEvery: 1,
        snapshotLogBytes: 4096,
        snapshotAfterMs: 1000,
        maxConcurrentInvocations: 16,
        egress: { orders: { type: "stdout" }, audit: null },
        log: { level: "silent" },
      },
      base,
    );
    expect(config).toEqual({
      shards: 8,
      ingress: {
        host: "0.0.0.0",
        port: 0,
        maxRequestBytes: 1024,
        ignoreUnknownJsonFields: true,
        headersTimeoutMs: 1,
        idleTimeoutMs: 2,
        shutdownGraceMs: 0,
      },
      storage: { backend: "local", directory: "/data", fsync: false },
      functions: { module: "/srv/app/m.js" },
      retry: { maxAttempts: 1, initialDelayMs: 0, maxDelayMs: 0 },
      memoRetentionMs: 60_000,
      invokeTimeoutMs: 5_000,
      snapshotEvery: 1,
      snapshotLogBytes: 4096,
      snapshotAfterMs: 1000,
      maxConcurrentInvocations: 16,
      egress: { orders: { type: "stdout" }, audit: { type: "stdout" } },
      log: { level: "silent" },
    });
  });

  it("takes the memory backend without a directory", () => {
    expect(validateConfig({ storage: { backend: "memory" } }, base).storage).toEqual({ backend: "memory" });
  });

  it("takes the boundary values of shards and port", () => {
    expect(validateConfig({ shards: 1 }).shards).toBe(1);
    expect(validateConfig({ shards: 65536 }).shards).toBe(65536);
    expect(validateConfig({ ingress: { port: 0 } }).ingress.port).toBe(0);
    expect(validateConfig({ ingress: { port: 65535 } }).ingress.port).toBe(65535);
  });

  it("uses the working directory when no base folder is given", () => {
    expect(validateConfig({}).storage).toMatchObject({ directory: join(process.cwd(), ".shoal") });
  });

  describe("names the offending key", () => {
    const cases: [what: string, raw: unknown, message: string][] = [
      ["a top level that is not a mapping", ["shards"], '(top level): expected a mapping, got ["shards"]'],
      [
        "an unknown top-level key",
        { shard: 4 },
        "shard: unknown key (expected one of: shards, ingress, storage, functions, retry, memoRetentionMs, invokeTimeoutMs, snapshotEvery, snapshotLogBytes, snapshotAfterMs, maxConcurrentInvocations, egress, log)",
      ],
      [
        "an unknown ingress key",
        { ingress: { prot: 80 } },
        "ingress.prot: unknown key (expected one of: host, port, maxRequestBytes, ignoreUnknownJsonFields, headersTimeoutMs, idleTimeoutMs, shutdownGraceMs)",
      ],
      ["an unknown storage key", { storage: { dir: "x" } }, "storage.dir: unknown key (expected one of: backend, directory, fsync)"],
      ["an unknown functions key", { functions: { modules: ["a.js"] } }, "functions.modules: unknown key (expected one of: module)"],
      [
        "an unknown retry key",
        { retry: { attempts: 3 } },
        "retry.attempts: unknown key (expected one of: maxAttempts, initialDelayMs, maxDelayMs)",
      ],
      [
        "an unknown egress key",
        { egress: { orders: { type: "stdout", url: "http://x" } } },
        "egress.orders.url: unknown key (expected one of: type)",
      ],
      ["an unknown log key", { log: { format: "json" } }, "log.format: unknown key (expected one of: level)"],
      ["a section that is not a mapping", { ingress: 8080 }, "ingress: expected a mapping, got 8080"],
      ["an egress that is not a mapping", { egress: { orders: "stdout" } }, 'egress.orders: expected a mapping, got "stdout"'],
      ["egress as a list", { egress: ["orders"] }, 'egress: expected a mapping, got ["orders"]'],
      ["shards as a string", { shards: "64" }, 'shards: expected an integer from 1 to 65536, got "64"'],
      ["shards as a fraction", { shards: 1.5 }, "shards: expected an integer from 1 to 65536, got 1.5"],
      ["zero shards", { shards: 0 }, "shards: expected an integer from 1 to 65536, got 0"],
      ["too many shards", { shards: 65537 }, "shards: expected an integer from 1 to 65536, got 65537"],
      ["a negative port", { ingress: { port: -1 } }, "ingress.port: expected an integer from 0 to 65535, got -1"],
      ["a port out of range", { ingress: { port: 65536 } }, "ingress.port: expected an integer from 0 to 65535, got 65536"],
      ["a port as a string", { ingress: { port: "8080" } }, 'ingress.port: expected an integer from 0 to 65535, got "8080"'],
      ["an empty host", { ingress: { host: "" } }, 'ingress.host: expected a non-empty string, got ""'],
      ["a host as a number", { ingress: { host: 127 } }, "ingress.host: expected a non-empty string, got 127"],
      [
        "a zero request size",
        { ingress: { maxRequestBytes: 0 } },
        "ingress.maxRequestBytes: expected an integer from 1 to 9007199254740991, got 0",
      ],
      ["an unknown storage backend", { storage: { backend: "postgres" } }, 'storage.backend: expected "local" or "memory", got "postgres"'],
      ["a storage backend as a number", { storage: { backend: 1 } }, "storage.backend: expected a non-empty string, got 1"],
      ["fsync as a string", { storage: { fsync: "yes" } }, 'storage.fsync: expected true or false, got "yes"'],
      ["a storage directory as a list", { storage: { directory: ["a"] } }, 'storage.directory: expected a non-empty string, got ["a"]'],
      ["an empty module", { functions: { module: "" } }, 'functions.module: expected a non-empty string, got ""'],
      ["a module without a value", { functions: { module: null } }, "functions.module: expected a non-empty string, got null"],
      ["zero attempts", { retry: { maxAttempts: 0 } }, "retry.maxAttempts: expected an integer from 1 to 9007199254740991, got 0"],
      [
        "a negative delay",
        { retry: { initialDelayMs: -5 } },
        "retry.initialDelayMs: expected an integer from 0 to 9007199254740991, got -5",
      ],
      ["a zero memo retention", { memoRetentionMs: 0 }, "memoRetentionMs: expected an integer from 1 to 9007199254740991, got 0"],
      ["a zero invoke timeout", { invokeTimeoutMs: 0 }, "invokeTimeoutMs: expected an integer from 1 to 9007199254740991, got 0"],
      ["snapshotEvery as a boolean", { snapshotEvery: true }, "snapshotEvery: expected an integer from 1 to 9007199254740991, got true"],
      [
        "zero concurrency",
        { maxConcurrentInvocations: 0 },
        "maxConcurrentInvocations: expected an integer from 1 to 9007199254740991, got 0",
      ],
      [
        "an unsupported egress type",
        { egress: { orders: { type: "nats" } } },
        'egress.orders.type: "nats" is not supported here (supported: stdout)',
      ],
      ["an egress type as a number", { egress: { orders: { type: 1 } } }, "egress.orders.type: expected a non-empty string, got 1"],
      ["an unknown log level", { log: { level: "verbose" } }, 'log.level: expected debug, info, warn, error or silent, got "verbose"'],
      ["a log level as a number", { log: { level: 3 } }, "log.level: expected a non-empty string, got 3"],
    ];
    for (const [what, raw, message] of cases) {
      it(what, () => {
        expect(errorOf(raw).message).toBe(message);
      });
    }
  });
});

describe("loadConfig", () => {
  let dir = "";
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "shoal-config-"));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  function write(name: string, text: string): string {
    const path = join(dir, name);
    mkdirSync(join(path, ".."), { recursive: true });
    writeFileSync(path, text);
    return path;
  }

  it("reads YAML and resolves relative paths against the file's folder", () => {
    const path = write(
      "deploy/shoal.yaml",
      ["shards: 16", "ingress:", "  port: 9090", "storage:", "  directory: state", "functions:", "  module: ../dist/module.js", ""].join(
        "\n",
      ),
    );
    const config = loadConfig(path);
    expect(config.shards).toBe(16);
    expect(config.ingress.port).toBe(9090);
    expect(config.storage).toEqual({ backend: "local", directory: join(dir, "deploy/state"), fsync: true });
    expect(config.functions.module).toBe(join(dir, "dist/module.js"));
  });

  it("resolves against the file's folder also when given a relative path", () => {
    const path = write("rel/shoal.yaml", "functions: { module: ./m.js }\n");
    expect(loadConfig(relative(process.cwd(), path)).functions.module).toBe(join(dir, "rel/m.js"));
  });

  it("reads an empty file as all defaults", () => {
    const config = loadConfig(write("empty.yaml", ""));
    expect(config.shards).toBe(64);
    expect(config.storage).toEqual({ backend: "local", directory: join(dir, ".shoal"), fsync: true });
  });

  it("prefixes a validation error with the file", () => {
    const path = write("unknown.yaml", "ingress:\n  prot: 80\n");
    expect(() => loadConfig(path)).toThrow(ConfigError);
    expect(() => loadConfig(path)).toThrow(
      `${path}: ingress.prot: unknown key (expected one of: host, port, maxRequestBytes, ignoreUnknownJsonFields, headersTimeoutMs, idleTimeoutMs, shutdownGraceMs)`,
    );
  });

  it("names a YAML type mistake by key", () => {
    expect(() => loadConfig(write("fsync.yaml", "storage:\n  fsync: yes\n"))).toThrow('storage.fsync: expected true or false, got "yes"');
    expect(() => loadConfig(write("port.yaml", "ingress:\n  port: '8080'\n"))).toThrow(
      'ingress.port: expected an integer from 0 to 65535, got "8080"',
    );
  });

  it("refuses invalid YAML", () => {
    const path = write("broken.yaml", "ingress:\n  port: [8080\n");
    expect(() => loadConfig(path)).toThrow(ConfigError);
    expect(() => loadConfig(path)).toThrow(new RegExp(`^${escapeRegExp(path)}: not valid YAML: `));
    const duplicate = write("duplicate.yaml", "shards: 4\nshards: 8\n");
    expect(() => loadConfig(duplicate)).toThrow(new RegExp(`^${escapeRegExp(duplicate)}: not valid YAML: .*unique`));
  });

  it("refuses a file it cannot read", () => {
    const missing = join(dir, "missing.yaml");
    expect(() => loadConfig(missing)).toThrow(ConfigError);
    expect(() => loadConfig(missing)).toThrow(new RegExp(`^${escapeRegExp(missing)}: cannot read the config file: ENOENT`));
    expect(() => loadConfig(dir)).toThrow(new RegExp(`^${escapeRegExp(dir)}: cannot read the config file: EISDIR`));
  });
});

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}
