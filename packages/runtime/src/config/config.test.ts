import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { hostname, tmpdir } from "node:os";
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
    cluster: { nodeId: hostname().replace(/[^A-Za-z0-9_-]/g, "-"), leaseMs: 5_000 },
    functions: { module: undefined, descriptors: undefined, remote: [] },
    retry: { maxAttempts: 5, initialDelayMs: 100, maxDelayMs: 5_000 },
    memoRetentionMs: 24 * 3600_000,
    invokeTimeoutMs: 60_000,
    callResendMs: 10_000,
    instanceCacheSize: 10_000,
    instanceIdleMs: 60_000,
    maxConcurrentInvocations: 1024,
    egress: {},
    log: { level: "info" },
    warnings: [],
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
        callResendMs: 2_000,
        instanceCacheSize: 5,
        instanceIdleMs: 1000,
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
      cluster: defaults.cluster,
      functions: { module: "/srv/app/m.js", descriptors: undefined, remote: [] },
      retry: { maxAttempts: 1, initialDelayMs: 0, maxDelayMs: 0 },
      memoRetentionMs: 60_000,
      invokeTimeoutMs: 5_000,
      callResendMs: 2_000,
      instanceCacheSize: 5,
      instanceIdleMs: 1000,
      maxConcurrentInvocations: 16,
      egress: { orders: { type: "stdout" }, audit: { type: "stdout" } },
      log: { level: "silent" },
      warnings: [],
    });
  });

  it("takes remote endpoints per type and per package, with their defaults, TLS files resolved and the bearer token from the environment", () => {
    const config = validateConfig(
      {
        functions: {
          descriptors: "functions.binpb",
          remote: [
            { package: "shop.v1", url: "http://{service}-svc:9000" },
            {
              type: "bank.v1.Account",
              url: "https://bank:9443",
              timeoutMs: 500,
              maxConcurrent: 2,
              maxBatch: 1,
              invokeMany: { maxRequests: 1, maxBytes: 65_536 },
              retry: { maxAttempts: 7, initialDelayMs: 1, maxDelayMs: 10 },
              tls: { ca: "tls/ca.pem", cert: "tls/client.pem", key: "/keys/client.key" },
              bearerTokenEnv: "BANK_TOKEN",
            },
          ],
        },
      },
      base,
      { BANK_TOKEN: "s3cret" },
    );
    expect(config.functions).toEqual({
      module: undefined,
      descriptors: "/srv/app/functions.binpb",
      remote: [
        {
          path: "functions.remote[0]",
          type: undefined,
          package: "shop.v1",
          url: "http://{service}-svc:9000",
          timeoutMs: 10_000,
          maxConcurrent: 64,
          maxBatch: 16,
          invokeMany: { maxRequests: 32, maxBytes: 4 * 1024 * 1024 },
          retry: { maxAttempts: 3, initialDelayMs: 100, maxDelayMs: 2_000 },
          tls: undefined,
          bearerToken: undefined,
        },
        {
          path: "functions.remote[1]",
          type: "bank.v1.Account",
          package: undefined,
          url: "https://bank:9443",
          timeoutMs: 500,
          maxConcurrent: 2,
          maxBatch: 1,
          invokeMany: { maxRequests: 1, maxBytes: 65_536 },
          retry: { maxAttempts: 7, initialDelayMs: 1, maxDelayMs: 10 },
          tls: { ca: "/srv/app/tls/ca.pem", cert: "/srv/app/tls/client.pem", key: "/keys/client.key" },
          bearerToken: "s3cret",
        },
      ],
    });
  });

  it("takes the snapshot keys of earlier versions with a warning that they no longer do anything", () => {
    const config = validateConfig({ snapshotEvery: 50, snapshotLogBytes: 4096, snapshotAfterMs: 1000 }, base);
    expect(config).toEqual({ ...defaults, warnings: expect.any(Array) });
    expect(config.warnings).toEqual(
      ["snapshotEvery", "snapshotLogBytes", "snapshotAfterMs"].map(
        (key) =>
          `${key} no longer does anything (shards no longer write snapshots: their state is kept in an embedded store); remove it from shoal.yaml`,
      ),
    );
  });

  it("takes the memory backend without a directory", () => {
    expect(validateConfig({ storage: { backend: "memory" } }, base).storage).toEqual({ backend: "memory" });
  });

  it("takes the cluster section on the nats backend", () => {
    expect(validateConfig({ storage: { backend: "nats" }, cluster: { nodeId: "node-1", leaseMs: 2_000 } }, base).cluster).toEqual({
      nodeId: "node-1",
      leaseMs: 2_000,
    });
  });

  it("takes the nats backend with its servers, directory, replicas and prefix", () => {
    expect(
      validateConfig(
        {
          storage: {
            backend: "nats",
            servers: ["nats://a:4222", "nats://b:4222"],
            directory: "cache",
            replicas: 3,
            prefix: "orders_v2-eu",
          },
        },
        base,
      ).storage,
    ).toEqual({
      backend: "nats",
      servers: ["nats://a:4222", "nats://b:4222"],
      directory: "/srv/app/cache",
      replicas: 3,
      prefix: "orders_v2-eu",
      security: {},
    });
    expect(validateConfig({ storage: { backend: "nats" } }, base).storage).toEqual({
      backend: "nats",
      servers: ["nats://127.0.0.1:4222"],
      directory: "/srv/app/.shoal",
      replicas: undefined,
      prefix: "shoal",
      security: {},
    });
  });

  it("takes NATS TLS files relative to the config file, and one way to authenticate, its secret from the environment if asked", () => {
    const env = { NATS_PASSWORD: "s3cret", NATS_TOKEN: "t0ken" };
    const storage = (extra: object) => validateConfig({ storage: { backend: "nats", ...extra } }, base, env).storage;
    expect(
      storage({ tls: { ca: "nats/ca.pem", cert: "nats/client.pem", key: "nats/client.key" }, user: "shoal", passwordEnv: "NATS_PASSWORD" }),
    ).toMatchObject({
      security: {
        tls: { ca: "/srv/app/nats/ca.pem", cert: "/srv/app/nats/client.pem", key: "/srv/app/nats/client.key" },
        user: "shoal",
        password: "s3cret",
      },
    });
    expect(storage({ tokenEnv: "NATS_TOKEN" })).toMatchObject({ security: { token: "t0ken" } });
    expect(storage({ token: "inline" })).toMatchObject({ security: { token: "inline" } });
    expect(storage({ credentials: "/etc/nats/node.creds" })).toMatchObject({ security: { credentials: "/etc/nats/node.creds" } });
    const refused = (extra: object) => () => storage(extra);
    expect(refused({ user: "shoal" })).toThrow("storage: user and password (or passwordEnv) go together");
    expect(refused({ user: "shoal", password: "p", token: "t" })).toThrow(
      "storage: expected at most one of user/password, token and credentials",
    );
    expect(refused({ token: "t", tokenEnv: "NATS_TOKEN" })).toThrow("storage: expected at most one of token and tokenEnv");
    expect(refused({ tokenEnv: "UNSET_VARIABLE" })).toThrow(
      "storage.tokenEnv: the environment variable UNSET_VARIABLE is not set (it holds the NATS token)",
    );
    expect(refused({ tls: { cert: "c.pem" } })).toThrow("storage.tls: cert and key go together");
    expect(refused({ tls: { ca: "a", crt: "b" } })).toThrow("storage.tls.crt: unknown key (expected one of: ca, cert, key)");
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
        "shard: unknown key (expected one of: shards, ingress, storage, cluster, functions, retry, memoRetentionMs, invokeTimeoutMs, callResendMs, instanceCacheSize, instanceIdleMs, snapshotEvery, snapshotLogBytes, snapshotAfterMs, maxConcurrentInvocations, egress, log)",
      ],
      [
        "an unknown ingress key",
        { ingress: { prot: 80 } },
        "ingress.prot: unknown key (expected one of: host, port, maxRequestBytes, ignoreUnknownJsonFields, headersTimeoutMs, idleTimeoutMs, shutdownGraceMs)",
      ],
      ["an unknown storage key", { storage: { dir: "x" } }, "storage.dir: unknown key (expected one of: backend, directory, fsync)"],
      [
        "an unknown functions key",
        { functions: { modules: ["a.js"] } },
        "functions.modules: unknown key (expected one of: module, descriptors, remote)",
      ],
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
      [
        "an unknown storage backend",
        { storage: { backend: "postgres" } },
        'storage.backend: expected "local", "nats" or "memory", got "postgres"',
      ],
      [
        "a fsync on the nats backend",
        { storage: { backend: "nats", fsync: true } },
        "storage.fsync: unknown key (expected one of: backend, directory, servers, replicas, prefix, tls, user, password, passwordEnv, token, tokenEnv, credentials)",
      ],
      [
        "an empty list of NATS servers",
        { storage: { backend: "nats", servers: [] } },
        'storage.servers: expected a list of NATS URLs (e.g. ["nats://127.0.0.1:4222"]), got []',
      ],
      [
        "a NATS server that is no URL",
        { storage: { backend: "nats", servers: ["127.0.0.1:4222"] } },
        'storage.servers[0]: expected a NATS URL such as nats://127.0.0.1:4222, got "127.0.0.1:4222"',
      ],
      [
        "NATS replicas other than 1 or 3",
        { storage: { backend: "nats", replicas: 2 } },
        "storage.replicas: expected 1 (one server) or 3 (a cluster of 3 or more), got 2",
      ],
      [
        "a NATS prefix with a dot, which would split its subjects' tokens",
        { storage: { backend: "nats", prefix: "orders.eu" } },
        'storage.prefix: expected 1 to 32 letters, digits, "-" or "_" (it begins every stream, bucket and subject name), got "orders.eu"',
      ],
      [
        "an empty NATS prefix",
        { storage: { backend: "nats", prefix: "" } },
        'storage.prefix: expected 1 to 32 letters, digits, "-" or "_" (it begins every stream, bucket and subject name), got ""',
      ],
      [
        "a NATS prefix longer than 32 characters",
        { storage: { backend: "nats", prefix: "a".repeat(33) } },
        `storage.prefix: expected 1 to 32 letters, digits, "-" or "_" (it begins every stream, bucket and subject name), got "${"a".repeat(33)}"`,
      ],
      [
        "an unknown cluster key",
        { storage: { backend: "nats" }, cluster: { lease: 5000 } },
        "cluster.lease: unknown key (expected one of: nodeId, leaseMs)",
      ],
      [
        "a cluster section on the local backend",
        { cluster: { nodeId: "a" } },
        'cluster: only with storage.backend nats (this node runs on "local", alone); remove the section',
      ],
      [
        "a node id that cannot be a NATS subject token",
        { storage: { backend: "nats" }, cluster: { nodeId: "node.1" } },
        'cluster.nodeId: expected up to 128 letters, digits, "-" or "_" (it names NATS subjects and keys), got "node.1"',
      ],
      [
        "a lease too short to renew",
        { storage: { backend: "nats" }, cluster: { leaseMs: 100 } },
        "cluster.leaseMs: expected an integer from 300 to 600000, got 100",
      ],
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
      [
        "a call resend time that is not a number",
        { callResendMs: "10s" },
        'callResendMs: expected an integer from 1 to 9007199254740991, got "10s"',
      ],
      ["a zero invoke timeout", { invokeTimeoutMs: 0 }, "invokeTimeoutMs: expected an integer from 1 to 9007199254740991, got 0"],
      ["a zero instance cache", { instanceCacheSize: 0 }, "instanceCacheSize: expected an integer from 1 to 9007199254740991, got 0"],
      [
        "an instance idle time as a string",
        { instanceIdleMs: "1m" },
        'instanceIdleMs: expected an integer from 1 to 9007199254740991, got "1m"',
      ],
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
      [
        "remote as a mapping",
        { functions: { remote: { type: "a.B" } } },
        'functions.remote: expected a list of endpoints, got {"type":"a.B"}',
      ],
      [
        "a remote entry with neither type nor package",
        { functions: { descriptors: "f.binpb", remote: [{ url: "http://x" }] } },
        "functions.remote[0]: expected exactly one of type (a function type, e.g. bank.v1.Account) and package (e.g. shop.v1)",
      ],
      [
        "a remote entry with both type and package",
        { functions: { remote: [{ type: "a.B", package: "a", url: "http://x" }] } },
        "functions.remote[0]: expected exactly one of type (a function type, e.g. bank.v1.Account) and package (e.g. shop.v1)",
      ],
      [
        "an unknown remote key",
        { functions: { remote: [{ type: "a.B", url: "http://x", timeout: 5 }] } },
        "functions.remote[0].timeout: unknown key (expected one of: type, package, url, timeoutMs, maxConcurrent, maxBatch, invokeMany, retry, tls, bearerToken, bearerTokenEnv)",
      ],
      [
        "a type that is no full name",
        { functions: { remote: [{ type: "a/B", url: "http://x" }] } },
        'functions.remote[0].type: "a/B" is not a protobuf full name',
      ],
      [
        "a remote entry without a url",
        { functions: { remote: [{ package: "shop.v1" }] } },
        "functions.remote[0].url: required (the endpoint's base URL, e.g. http://cart-svc:9000)",
      ],
      [
        "a url that is no URL",
        { functions: { remote: [{ package: "shop.v1", url: "cart-svc:9000x" }] } },
        'functions.remote[0].url: expected an http:// or https:// URL, got "cart-svc:9000x"',
      ],
      [
        "a url without a scheme",
        { functions: { remote: [{ package: "shop.v1", url: "//x" }] } },
        'functions.remote[0].url: "//x" is not a URL (expected e.g. http://cart-svc:9000)',
      ],
      [
        "zero concurrent requests",
        { functions: { remote: [{ package: "shop.v1", url: "http://x", maxConcurrent: 0 }] } },
        "functions.remote[0].maxConcurrent: expected an integer from 1 to 9007199254740991, got 0",
      ],
      [
        "a zero batch",
        { functions: { remote: [{ package: "shop.v1", url: "http://x", maxBatch: 0 }] } },
        "functions.remote[0].maxBatch: expected an integer from 1 to 9007199254740991, got 0",
      ],
      [
        "an InvokeMany bound of 0",
        { functions: { remote: [{ package: "shop.v1", url: "http://x", invokeMany: { maxRequests: 0 } }] } },
        "functions.remote[0].invokeMany.maxRequests: expected an integer from 1 to 9007199254740991, got 0",
      ],
      [
        "an unknown InvokeMany key",
        { functions: { remote: [{ package: "shop.v1", url: "http://x", invokeMany: { max: 4 } }] } },
        "functions.remote[0].invokeMany.max: unknown key (expected one of: maxRequests, maxBytes)",
      ],
      [
        "zero remote attempts",
        { functions: { remote: [{ package: "shop.v1", url: "http://x", retry: { maxAttempts: 0 } }] } },
        "functions.remote[0].retry.maxAttempts: expected an integer from 1 to 9007199254740991, got 0",
      ],
      [
        "a client certificate without its key",
        { functions: { remote: [{ package: "shop.v1", url: "https://x", tls: { cert: "c.pem" } }] } },
        "functions.remote[0].tls: cert and key go together (the client certificate and its private key, for mTLS)",
      ],
      [
        "tls on an http url",
        { functions: { remote: [{ package: "shop.v1", url: "http://x", tls: { ca: "ca.pem" } }] } },
        'functions.remote[0].tls: needs an https:// url, got "http://x"',
      ],
      [
        "an unknown tls key",
        { functions: { remote: [{ package: "shop.v1", url: "https://x", tls: { ca: "ca.pem", pass: "x" } }] } },
        "functions.remote[0].tls.pass: unknown key (expected one of: ca, cert, key)",
      ],
      [
        "both bearer token keys",
        { functions: { remote: [{ package: "shop.v1", url: "http://x", bearerToken: "t", bearerTokenEnv: "T" }] } },
        "functions.remote[0]: expected at most one of bearerToken and bearerTokenEnv",
      ],
      [
        "a bearer token variable that is not set",
        { functions: { remote: [{ package: "shop.v1", url: "http://x", bearerTokenEnv: "SHOAL_TEST_UNSET_TOKEN" }] } },
        "functions.remote[0].bearerTokenEnv: the environment variable SHOAL_TEST_UNSET_TOKEN is not set (it holds the endpoint's bearer token)",
      ],
      [
        "remote attempts that outlast invokeTimeoutMs",
        {
          invokeTimeoutMs: 30_000,
          functions: { descriptors: "f.binpb", remote: [{ package: "shop.v1", url: "http://x", timeoutMs: 10_000 }] },
        },
        "functions.remote[0]: its attempts take up to 30300 ms (timeoutMs × retry.maxAttempts plus the backoff), not less than invokeTimeoutMs (30000 ms): raise invokeTimeoutMs or lower timeoutMs or retry.maxAttempts",
      ],
      [
        "remote endpoints without descriptors",
        { functions: { remote: [{ package: "shop.v1", url: "http://x" }] } },
        "functions.descriptors: required with functions.remote: a descriptor set of the remote function types (buf build -o functions.binpb)",
      ],
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
