import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import { dirname, resolve } from "node:path";
import { parse } from "yaml";
import { defaults } from "./defaults.js";

/** `shoal.yaml`, validated. Every field has a default (`defaults`, config/defaults.ts) except `functions.module`. */
export interface ShoalConfig {
  readonly shards: number;
  readonly ingress: {
    readonly host: string;
    readonly port: number;
    readonly maxRequestBytes: number;
    /** Drop unknown fields of JSON requests instead of refusing them; see `RuntimeOptions.ignoreUnknownJsonFields`. Default false. */
    readonly ignoreUnknownJsonFields: boolean;
    /** Time from accept to the first request's headers before a connection is dropped, in ms. Default 10 000. */
    readonly headersTimeoutMs: number;
    /** Time a connection may stay open with no request in flight, in ms. Default 60 000. */
    readonly idleTimeoutMs: number;
    /** On stop, how long requests in flight may take to finish, in ms. Default 5 000. */
    readonly shutdownGraceMs: number;
  };
  readonly storage:
    | { readonly backend: "local"; readonly directory: string; readonly fsync: boolean }
    | {
        readonly backend: "nats";
        /** NATS server URLs; the node fails over between them. */
        readonly servers: readonly string[];
        /** The node's local materialized store; a cache of JetStream, rebuilt when missing. */
        readonly directory: string;
        /** Replicas of the streams and buckets the node creates; unset: 3 on a cluster, 1 on a single server. */
        readonly replicas: 1 | 3 | undefined;
        /** The first part of every stream, bucket and subject name: one per application sharing a NATS. Default `shoal`. */
        readonly prefix: string;
        /** TLS and credentials for NATS (`tls`, `user`/`password`, `token`, `credentials`); empty: none. */
        readonly security: NatsSecurity;
      }
    | { readonly backend: "memory" };
  /** Cluster mode, which every node on the `nats` backend runs in (one node is a cluster of one). */
  readonly cluster: {
    /** This node's id: its leases, membership record and NATS subjects. Default: the host name. */
    readonly nodeId: string;
    /** How long a shard lease and a membership record last without renewal, in ms; renewed every third of it. Default 5 000. */
    readonly leaseMs: number;
  };
  readonly functions: {
    /** An embedded module (`export default module(...)`), run in this process. */
    readonly module: string | undefined;
    /**
     * A descriptor set (`buf build -o functions.binpb`) holding the remote
     * function types: the node reads their handlers, keys and state from it,
     * with none of their code. Required with `remote`.
     */
    readonly descriptors: string | undefined;
    /** Remote function endpoints, per function type or per package. */
    readonly remote: readonly RemoteEndpointConfig[];
  };
  readonly retry: { readonly maxAttempts: number; readonly initialDelayMs: number; readonly maxDelayMs: number };
  readonly memoRetentionMs: number;
  readonly invokeTimeoutMs: number;
  /** How long an invocation awaits a call's result before it sends the call again, in ms. */
  readonly callResendMs: number;
  /** Decoded instances a node holds in memory; see `RuntimeOptions.instanceCacheSize`. */
  readonly instanceCacheSize: number;
  /** Time after its last use at which an instance is dropped from memory, in ms. */
  readonly instanceIdleMs: number;
  readonly maxConcurrentInvocations: number;
  readonly egress: Readonly<Record<string, { readonly type: "stdout" }>>;
  readonly log: { readonly level: "debug" | "info" | "warn" | "error" | "silent" };
  /** Keys that are valid but no longer do anything: the node logs each as a warning at start. */
  readonly warnings: readonly string[];
}

/**
 * One entry of `functions.remote`: the endpoint serving one function type
 * (`type`) or every function type of a protobuf package (`package`).
 */
export interface RemoteEndpointConfig {
  /** Where the entry is in the file (`functions.remote[0]`), for error messages. */
  readonly path: string;
  /** A function type's full name, e.g. `bank.v1.Account`; exactly one of `type` and `package` is set. */
  readonly type: string | undefined;
  /** A protobuf package, e.g. `shop.v1`: every function type in it. */
  readonly package: string | undefined;
  /**
   * The endpoint's base URL (`http://` for h2c, `https://` for TLS). It may
   * hold `{type}` (the full type name), `{service}` (its last part, lower
   * case) and `{package}`, filled in per function type.
   */
  readonly url: string;
  /** Time one Invoke request may take, in ms. Default 10 000. */
  readonly timeoutMs: number;
  /** Invoke requests in flight at once; more wait in their shard. Default 64. */
  readonly maxConcurrent: number;
  /** Queued messages of one instance per Invoke request. Default 16. */
  readonly maxBatch: number;
  /**
   * Invocations of distinct instances sent in one InvokeMany request: at most
   * `maxRequests` (1: never InvokeMany) and `maxBytes` of requests. Default 32 and 4 MiB.
   */
  readonly invokeMany: { readonly maxRequests: number; readonly maxBytes: number };
  /** Retries of a failed Invoke request. Default 3 attempts from 100 ms, doubling to 2 s. */
  readonly retry: { readonly maxAttempts: number; readonly initialDelayMs: number; readonly maxDelayMs: number };
  /** PEM files (paths resolved): `ca` to trust instead of the system's CAs, `cert` and `key` for mTLS. */
  readonly tls: { readonly ca: string | undefined; readonly cert: string | undefined; readonly key: string | undefined } | undefined;
  /** Sent as `Authorization: Bearer <token>` (from `bearerToken`, or the variable `bearerTokenEnv` names). */
  readonly bearerToken: string | undefined;
}

/** Keys earlier versions had, accepted with a warning so that an old shoal.yaml still starts. */
const retiredKeys: Readonly<Record<string, string>> = {
  snapshotEvery: "shards no longer write snapshots: their state is kept in an embedded store",
  snapshotLogBytes: "shards no longer write snapshots: their state is kept in an embedded store",
  snapshotAfterMs: "shards no longer write snapshots: their state is kept in an embedded store",
};

/** A config file that does not describe a valid deployment: the message names the key. */
export class ConfigError extends Error {
  override name = "ConfigError";
}

type Obj = Record<string, unknown>;

function object(value: unknown, path: string): Obj {
  if (value === undefined || value === null) return {};
  if (typeof value !== "object" || Array.isArray(value)) throw new ConfigError(`${path}: expected a mapping, got ${JSON.stringify(value)}`);
  return value as Obj;
}

function onlyKeys(obj: Obj, path: string, allowed: readonly string[]) {
  for (const key of Object.keys(obj)) {
    if (!allowed.includes(key)) {
      throw new ConfigError(`${path ? `${path}.` : ""}${key}: unknown key (expected one of: ${allowed.join(", ")})`);
    }
  }
}

function integer(obj: Obj, key: string, path: string, fallback: number, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const value = obj[key];
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max) {
    throw new ConfigError(`${path}${key}: expected an integer from ${min} to ${max}, got ${JSON.stringify(value)}`);
  }
  return value;
}

function string(obj: Obj, key: string, path: string, fallback: string): string {
  const value = obj[key];
  if (value === undefined) return fallback;
  if (typeof value !== "string" || value === "")
    throw new ConfigError(`${path}${key}: expected a non-empty string, got ${JSON.stringify(value)}`);
  return value;
}

function boolean(obj: Obj, key: string, path: string, fallback: boolean): boolean {
  const value = obj[key];
  if (value === undefined) return fallback;
  if (typeof value !== "boolean") throw new ConfigError(`${path}${key}: expected true or false, got ${JSON.stringify(value)}`);
  return value;
}

/**
 * Validates a parsed config. Relative paths resolve against `baseDir` (the
 * config file's folder); `bearerTokenEnv` names a variable of `env`.
 */
export function validateConfig(raw: unknown, baseDir: string = process.cwd(), env: NodeJS.ProcessEnv = process.env): ShoalConfig {
  const root = object(raw, "(top level)");
  onlyKeys(root, "", [
    "shards",
    "ingress",
    "storage",
    "cluster",
    "functions",
    "retry",
    "memoRetentionMs",
    "invokeTimeoutMs",
    "callResendMs",
    "instanceCacheSize",
    "instanceIdleMs",
    ...Object.keys(retiredKeys),
    "maxConcurrentInvocations",
    "egress",
    "log",
  ]);
  const ingress = object(root.ingress, "ingress");
  onlyKeys(ingress, "ingress", [
    "host",
    "port",
    "maxRequestBytes",
    "ignoreUnknownJsonFields",
    "headersTimeoutMs",
    "idleTimeoutMs",
    "shutdownGraceMs",
  ]);
  const storage = object(root.storage, "storage");
  const backend = string(storage, "backend", "storage.", defaults.storage.backend);
  if (backend !== "local" && backend !== "nats" && backend !== "memory")
    throw new ConfigError(`storage.backend: expected "local", "nats" or "memory", got "${backend}"`);
  onlyKeys(
    storage,
    "storage",
    backend === "nats" ? ["backend", "directory", "servers", "replicas", "prefix", ...natsSecurityKeys] : ["backend", "directory", "fsync"],
  );
  const cluster = object(root.cluster, "cluster");
  onlyKeys(cluster, "cluster", ["nodeId", "leaseMs"]);
  if (backend !== "nats" && Object.keys(cluster).length > 0)
    throw new ConfigError(`cluster: only with storage.backend nats (this node runs on "${backend}", alone); remove the section`);
  const functions = object(root.functions, "functions");
  onlyKeys(functions, "functions", ["module", "descriptors", "remote"]);
  const remote = remoteEndpoints(functions.remote, baseDir, env);
  if (remote.length > 0 && functions.descriptors === undefined) {
    throw new ConfigError(
      "functions.descriptors: required with functions.remote: a descriptor set of the remote function types (buf build -o functions.binpb)",
    );
  }
  const invokeTimeoutMs = integer(root, "invokeTimeoutMs", "", defaults.invokeTimeoutMs, 1);
  for (const endpoint of remote) {
    // The node would abandon a run its endpoint is still retrying, and run it again beside it.
    const { maxAttempts, initialDelayMs, maxDelayMs } = endpoint.retry;
    let worstMs = maxAttempts * endpoint.timeoutMs;
    for (let n = 1; n < maxAttempts; n++) worstMs += Math.min(maxDelayMs, initialDelayMs * 2 ** (n - 1));
    if (worstMs >= invokeTimeoutMs) {
      throw new ConfigError(
        `${endpoint.path}: its attempts take up to ${worstMs} ms (timeoutMs × retry.maxAttempts plus the backoff), not less than invokeTimeoutMs (${invokeTimeoutMs} ms): raise invokeTimeoutMs or lower timeoutMs or retry.maxAttempts`,
      );
    }
  }
  const retry = object(root.retry, "retry");
  onlyKeys(retry, "retry", ["maxAttempts", "initialDelayMs", "maxDelayMs"]);
  const egressRaw = object(root.egress, "egress");
  const egress: Record<string, { type: "stdout" }> = {};
  for (const [name, value] of Object.entries(egressRaw)) {
    const e = object(value, `egress.${name}`);
    onlyKeys(e, `egress.${name}`, ["type"]);
    const type = string(e, "type", `egress.${name}.`, "stdout");
    if (type !== "stdout") throw new ConfigError(`egress.${name}.type: "${type}" is not supported here (supported: stdout)`);
    egress[name] = { type };
  }
  const log = object(root.log, "log");
  onlyKeys(log, "log", ["level"]);
  const level = string(log, "level", "log.", defaults.logLevel);
  if (!["debug", "info", "warn", "error", "silent"].includes(level)) {
    throw new ConfigError(`log.level: expected debug, info, warn, error or silent, got "${level}"`);
  }
  const module = functions.module === undefined ? undefined : resolve(baseDir, string(functions, "module", "functions.", ""));
  return {
    shards: integer(root, "shards", "", defaults.shards, 1, 65536),
    ingress: {
      host: string(ingress, "host", "ingress.", defaults.ingress.host),
      port: integer(ingress, "port", "ingress.", defaults.ingress.port, 0, 65535),
      maxRequestBytes: integer(ingress, "maxRequestBytes", "ingress.", defaults.ingress.maxRequestBytes, 1),
      ignoreUnknownJsonFields: boolean(ingress, "ignoreUnknownJsonFields", "ingress.", defaults.ingress.ignoreUnknownJsonFields),
      headersTimeoutMs: integer(ingress, "headersTimeoutMs", "ingress.", defaults.ingress.headersTimeoutMs, 1),
      idleTimeoutMs: integer(ingress, "idleTimeoutMs", "ingress.", defaults.ingress.idleTimeoutMs, 1),
      shutdownGraceMs: integer(ingress, "shutdownGraceMs", "ingress.", defaults.ingress.shutdownGraceMs, 0),
    },
    storage:
      backend === "memory"
        ? { backend }
        : backend === "nats"
          ? {
              backend,
              servers: natsServers(storage.servers),
              directory: resolve(baseDir, string(storage, "directory", "storage.", defaults.storage.directory)),
              replicas: natsReplicas(storage.replicas),
              prefix: natsPrefix(storage.prefix),
              security: natsSecurity(storage, baseDir, env),
            }
          : {
              backend,
              directory: resolve(baseDir, string(storage, "directory", "storage.", defaults.storage.directory)),
              fsync: boolean(storage, "fsync", "storage.", defaults.storage.fsync),
            },
    cluster: {
      nodeId: nodeIdOf(cluster.nodeId),
      leaseMs: integer(cluster, "leaseMs", "cluster.", defaults.cluster.leaseMs, 300, 600_000),
    },
    functions: {
      module,
      descriptors: functions.descriptors === undefined ? undefined : resolve(baseDir, string(functions, "descriptors", "functions.", "")),
      remote,
    },
    retry: {
      maxAttempts: integer(retry, "maxAttempts", "retry.", defaults.retry.maxAttempts, 1),
      initialDelayMs: integer(retry, "initialDelayMs", "retry.", defaults.retry.initialDelayMs, 0),
      maxDelayMs: integer(retry, "maxDelayMs", "retry.", defaults.retry.maxDelayMs, 0),
    },
    memoRetentionMs: integer(root, "memoRetentionMs", "", defaults.memoRetentionMs, 1),
    invokeTimeoutMs,
    callResendMs: integer(root, "callResendMs", "", defaults.callResendMs, 1),
    instanceCacheSize: integer(root, "instanceCacheSize", "", defaults.instanceCacheSize, 1),
    instanceIdleMs: integer(root, "instanceIdleMs", "", defaults.instanceIdleMs, 1),
    maxConcurrentInvocations: integer(root, "maxConcurrentInvocations", "", defaults.maxConcurrentInvocations, 1),
    egress,
    log: { level: level as ShoalConfig["log"]["level"] },
    warnings: Object.entries(retiredKeys)
      .filter(([key]) => root[key] !== undefined)
      .map(([key, why]) => `${key} no longer does anything (${why}); remove it from shoal.yaml`),
  };
}

const remoteKeys = [
  "type",
  "package",
  "url",
  "timeoutMs",
  "maxConcurrent",
  "maxBatch",
  "invokeMany",
  "retry",
  "tls",
  "bearerToken",
  "bearerTokenEnv",
];
const namePattern = /^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$/;

function natsServers(value: unknown): string[] {
  if (value === undefined) return [...defaults.storage.servers];
  const list = typeof value === "string" ? [value] : value;
  if (!Array.isArray(list) || list.length === 0) {
    throw new ConfigError(`storage.servers: expected a list of NATS URLs (e.g. ["nats://127.0.0.1:4222"]), got ${JSON.stringify(value)}`);
  }
  return list.map((url, i) => {
    if (typeof url !== "string" || !/^(nats|tls|ws|wss):\/\/\S+$/.test(url)) {
      throw new ConfigError(`storage.servers[${i}]: expected a NATS URL such as nats://127.0.0.1:4222, got ${JSON.stringify(url)}`);
    }
    return url;
  });
}

/**
 * How a node proves who it is to NATS and checks the servers; all optional.
 * At most one of `user`/`password`, `token` and `credentials`.
 */
export interface NatsSecurity {
  /** TLS: the CA that signed the servers' certificates (PEM file), and a client certificate and key (PEM files) where the servers require one. */
  readonly tls?: { readonly ca?: string; readonly cert?: string; readonly key?: string };
  readonly user?: string;
  readonly password?: string;
  readonly token?: string;
  /** A NATS credentials file (a user JWT and its NKey seed, as `nsc` writes it). */
  readonly credentials?: string;
}

/**
 * A `tls` mapping of PEM files, `ca`, `cert` and `key`, relative to the
 * config file's folder; `cert` and `key` go together (`pair` says what they are).
 */
function tlsFiles(
  raw: unknown,
  path: string,
  baseDir: string,
  pair: string,
): { readonly ca: string | undefined; readonly cert: string | undefined; readonly key: string | undefined } | undefined {
  if (raw === undefined || raw === null) return undefined;
  const tls = object(raw, path);
  onlyKeys(tls, path, ["ca", "cert", "key"]);
  const file = (key: string) => (tls[key] === undefined ? undefined : resolve(baseDir, string(tls, key, `${path}.`, "")));
  const files = { ca: file("ca"), cert: file("cert"), key: file("key") };
  if ((files.cert === undefined) !== (files.key === undefined)) throw new ConfigError(`${path}: cert and key go together (${pair})`);
  return files;
}

/** A secret given in the config (`key`) or in the environment variable `envKey` names; at most one of the two. */
function secret(obj: Obj, path: string, key: string, envKey: string, env: NodeJS.ProcessEnv, what: string): string | undefined {
  if (obj[key] !== undefined && obj[envKey] !== undefined) throw new ConfigError(`${path}: expected at most one of ${key} and ${envKey}`);
  if (obj[envKey] === undefined) return obj[key] === undefined ? undefined : string(obj, key, `${path}.`, "");
  const variable = string(obj, envKey, `${path}.`, "");
  const value = env[variable];
  if (value === undefined || value === "") {
    throw new ConfigError(`${path}.${envKey}: the environment variable ${variable} is not set (it holds ${what})`);
  }
  return value;
}

const natsSecurityKeys = ["tls", "user", "password", "passwordEnv", "token", "tokenEnv", "credentials"];

/** `storage.tls` (files relative to the config file), and at most one way to authenticate; secrets may come from the environment. */
function natsSecurity(storage: Record<string, unknown>, baseDir: string, env: NodeJS.ProcessEnv): NatsSecurity {
  const user = storage.user === undefined ? undefined : string(storage, "user", "storage.", "");
  const password = secret(storage, "storage", "password", "passwordEnv", env, "the NATS password");
  const token = secret(storage, "storage", "token", "tokenEnv", env, "the NATS token");
  const credentials = storage.credentials === undefined ? undefined : resolve(baseDir, string(storage, "credentials", "storage.", ""));
  if ((user === undefined) !== (password === undefined)) {
    throw new ConfigError("storage: user and password (or passwordEnv) go together");
  }
  const ways = [user, token, credentials].filter((way) => way !== undefined).length;
  if (ways > 1) throw new ConfigError("storage: expected at most one of user/password, token and credentials to authenticate to NATS");
  const tls = tlsFiles(storage.tls, "storage.tls", baseDir, "the client certificate and its private key, for servers that verify clients");
  return {
    ...(tls === undefined ? {} : { tls }),
    ...(user === undefined ? {} : { user, password }),
    ...(token === undefined ? {} : { token }),
    ...(credentials === undefined ? {} : { credentials }),
  };
}

/** A node id is a NATS subject token and a KV key: the host name by default, with any other character made "-". */
function nodeIdOf(value: unknown): string {
  if (value === undefined) return hostname().replace(/[^A-Za-z0-9_-]/g, "-");
  if (typeof value !== "string" || !/^[A-Za-z0-9_-]{1,128}$/.test(value)) {
    throw new ConfigError(
      `cluster.nodeId: expected up to 128 letters, digits, "-" or "_" (it names NATS subjects and keys), got ${JSON.stringify(value)}`,
    );
  }
  return value;
}

/**
 * Letters, digits, `-` and `_`: what a stream and a KV bucket name may hold and
 * a subject token may (no `.`, which separates tokens). 32 at most, so that the
 * longest name made of it (`KV_<prefix>-inputs-consumers`) stays short.
 */
function natsPrefix(value: unknown): string {
  if (value === undefined) return defaults.storage.prefix;
  if (typeof value !== "string" || !/^[A-Za-z0-9_-]{1,32}$/.test(value)) {
    throw new ConfigError(
      `storage.prefix: expected 1 to 32 letters, digits, "-" or "_" (it begins every stream, bucket and subject name), got ${JSON.stringify(value)}`,
    );
  }
  return value;
}

function natsReplicas(value: unknown): 1 | 3 | undefined {
  if (value === undefined) return undefined;
  if (value !== 1 && value !== 3) {
    throw new ConfigError(`storage.replicas: expected 1 (one server) or 3 (a cluster of 3 or more), got ${JSON.stringify(value)}`);
  }
  return value;
}

function remoteEndpoints(raw: unknown, baseDir: string, env: NodeJS.ProcessEnv): RemoteEndpointConfig[] {
  if (raw === undefined || raw === null) return [];
  if (!Array.isArray(raw)) throw new ConfigError(`functions.remote: expected a list of endpoints, got ${JSON.stringify(raw)}`);
  return raw.map((item, i) => {
    const path = `functions.remote[${i}]`;
    const entry = object(item, path);
    onlyKeys(entry, path, remoteKeys);
    const type = entry.type === undefined ? undefined : string(entry, "type", `${path}.`, "");
    const pkg = entry.package === undefined ? undefined : string(entry, "package", `${path}.`, "");
    if ((type === undefined) === (pkg === undefined)) {
      throw new ConfigError(`${path}: expected exactly one of type (a function type, e.g. bank.v1.Account) and package (e.g. shop.v1)`);
    }
    const name = (type ?? pkg) as string;
    if (!namePattern.test(name))
      throw new ConfigError(`${path}.${type !== undefined ? "type" : "package"}: "${name}" is not a protobuf full name`);
    if (entry.url === undefined) throw new ConfigError(`${path}.url: required (the endpoint's base URL, e.g. http://cart-svc:9000)`);
    const url = string(entry, "url", `${path}.`, "");
    let parsed: URL;
    try {
      parsed = new URL(url.replaceAll("{type}", "t").replaceAll("{service}", "s").replaceAll("{package}", "p"));
    } catch {
      throw new ConfigError(`${path}.url: "${url}" is not a URL (expected e.g. http://cart-svc:9000)`);
    }
    if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
      throw new ConfigError(`${path}.url: expected an http:// or https:// URL, got "${url}"`);
    }
    const retry = object(entry.retry, `${path}.retry`);
    onlyKeys(retry, `${path}.retry`, ["maxAttempts", "initialDelayMs", "maxDelayMs"]);
    const many = object(entry.invokeMany, `${path}.invokeMany`);
    onlyKeys(many, `${path}.invokeMany`, ["maxRequests", "maxBytes"]);
    const tls = tlsFiles(entry.tls, `${path}.tls`, baseDir, "the client certificate and its private key, for mTLS");
    if (tls !== undefined && parsed.protocol !== "https:") throw new ConfigError(`${path}.tls: needs an https:// url, got "${url}"`);
    const bearerToken = secret(entry, path, "bearerToken", "bearerTokenEnv", env, "the endpoint's bearer token");
    const d = defaults.remote;
    return {
      path,
      type,
      package: pkg,
      url,
      timeoutMs: integer(entry, "timeoutMs", `${path}.`, d.timeoutMs, 1),
      maxConcurrent: integer(entry, "maxConcurrent", `${path}.`, d.maxConcurrent, 1),
      maxBatch: integer(entry, "maxBatch", `${path}.`, d.maxBatch, 1),
      invokeMany: {
        maxRequests: integer(many, "maxRequests", `${path}.invokeMany.`, d.invokeManyMaxRequests, 1),
        maxBytes: integer(many, "maxBytes", `${path}.invokeMany.`, d.invokeManyMaxBytes, 1),
      },
      retry: {
        maxAttempts: integer(retry, "maxAttempts", `${path}.retry.`, d.retry.maxAttempts, 1),
        initialDelayMs: integer(retry, "initialDelayMs", `${path}.retry.`, d.retry.initialDelayMs, 0),
        maxDelayMs: integer(retry, "maxDelayMs", `${path}.retry.`, d.retry.maxDelayMs, 0),
      },
      tls,
      bearerToken,
    };
  });
}

/** Reads and validates a `shoal.yaml`. */
export function loadConfig(path: string): ShoalConfig {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    throw new ConfigError(`${path}: cannot read the config file: ${(err as Error).message}`);
  }
  let raw: unknown;
  try {
    raw = parse(text);
  } catch (err) {
    throw new ConfigError(`${path}: not valid YAML: ${(err as Error).message}`);
  }
  try {
    return validateConfig(raw, dirname(resolve(path)));
  } catch (err) {
    if (err instanceof ConfigError) throw new ConfigError(`${path}: ${err.message}`);
    throw err;
  }
}
