import { readFileSync } from "node:fs";
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
  readonly storage: { readonly backend: "local"; readonly directory: string; readonly fsync: boolean } | { readonly backend: "memory" };
  readonly functions: { readonly module: string | undefined };
  readonly retry: { readonly maxAttempts: number; readonly initialDelayMs: number; readonly maxDelayMs: number };
  readonly memoRetentionMs: number;
  readonly invokeTimeoutMs: number;
  readonly snapshotEvery: number;
  readonly snapshotLogBytes: number;
  readonly snapshotAfterMs: number;
  readonly maxConcurrentInvocations: number;
  readonly egress: Readonly<Record<string, { readonly type: "stdout" }>>;
  readonly log: { readonly level: "debug" | "info" | "warn" | "error" | "silent" };
}

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
 * config file's folder).
 */
export function validateConfig(raw: unknown, baseDir: string = process.cwd()): ShoalConfig {
  const root = object(raw, "(top level)");
  onlyKeys(root, "", [
    "shards",
    "ingress",
    "storage",
    "functions",
    "retry",
    "memoRetentionMs",
    "invokeTimeoutMs",
    "snapshotEvery",
    "snapshotLogBytes",
    "snapshotAfterMs",
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
  onlyKeys(storage, "storage", ["backend", "directory", "fsync"]);
  const backend = string(storage, "backend", "storage.", defaults.storage.backend);
  if (backend !== "local" && backend !== "memory") throw new ConfigError(`storage.backend: expected "local" or "memory", got "${backend}"`);
  const functions = object(root.functions, "functions");
  onlyKeys(functions, "functions", ["module"]);
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
        : {
            backend,
            directory: resolve(baseDir, string(storage, "directory", "storage.", defaults.storage.directory)),
            fsync: boolean(storage, "fsync", "storage.", defaults.storage.fsync),
          },
    functions: { module },
    retry: {
      maxAttempts: integer(retry, "maxAttempts", "retry.", defaults.retry.maxAttempts, 1),
      initialDelayMs: integer(retry, "initialDelayMs", "retry.", defaults.retry.initialDelayMs, 0),
      maxDelayMs: integer(retry, "maxDelayMs", "retry.", defaults.retry.maxDelayMs, 0),
    },
    memoRetentionMs: integer(root, "memoRetentionMs", "", defaults.memoRetentionMs, 1),
    invokeTimeoutMs: integer(root, "invokeTimeoutMs", "", defaults.invokeTimeoutMs, 1),
    snapshotEvery: integer(root, "snapshotEvery", "", defaults.snapshotEvery, 1),
    snapshotLogBytes: integer(root, "snapshotLogBytes", "", defaults.snapshotLogBytes, 1),
    snapshotAfterMs: integer(root, "snapshotAfterMs", "", defaults.snapshotAfterMs, 1),
    maxConcurrentInvocations: integer(root, "maxConcurrentInvocations", "", defaults.maxConcurrentInvocations, 1),
    egress,
    log: { level: level as ShoalConfig["log"]["level"] },
  };
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
