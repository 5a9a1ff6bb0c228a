import { readFileSync } from "node:fs";
import { createFileRegistry, type DescService, fromBinary, getOption, hasOption } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { type AnyFunctionType, defineFunction, type Logger } from "@shoal/sdk";
import { function$ as functionOption } from "@shoal/sdk/internal";
import type { RemoteEndpointConfig } from "../config/config.js";
import { createRemoteInvoker, type RemoteInvoker, type RemoteInvokerOptions } from "./remote-invoker.js";

/** Remote function types: where the node finds them and which endpoint serves which. */
export interface RemoteFunctionsOptions {
  /**
   * A descriptor set (`buf build -o functions.binpb`, a `FileDescriptorSet`)
   * holding the remote function services, their messages and imports.
   */
  readonly descriptors: Uint8Array;
  /** Where the descriptor set came from, for error messages. */
  readonly descriptorsSource: string;
  /** The endpoints, per function type or per package (shoal.yaml `functions.remote`); a `type` entry wins over a `package` entry. */
  readonly endpoints: readonly RemoteEndpointConfig[];
}

/** A function type served by a remote endpoint. */
export interface RemoteFunction {
  readonly fn: AnyFunctionType;
  readonly invoker: RemoteInvoker;
}

/** Thrown when the remote functions cannot be set up: the message names the key or file. */
export class RemoteFunctionsError extends Error {
  override name = "RemoteFunctionsError";
}

/**
 * Reads the function types of a descriptor set and gives each the invoker of
 * the endpoint its `functions.remote` entry names. Function types no entry
 * names are not served remotely; an entry that names no function type of the
 * set is an error (a typo would otherwise leave its functions unserved).
 */
export function createRemoteFunctions(
  options: RemoteFunctionsOptions,
  node: Pick<RemoteInvokerOptions, "logger" | "metrics"> & {
    readonly logger: Logger;
    /** A counting semaphore of `max` slots: each endpoint's cap on requests in flight (`maxConcurrent`). */
    createLimit(max: number): RemoteInvokerOptions["limit"];
  },
): RemoteFunction[] {
  const types = functionTypesOf(options.descriptors, options.descriptorsSource);
  const invokers = new Map<string, RemoteInvoker>();
  const out: RemoteFunction[] = [];
  for (const fn of types) {
    const service = fn.service as unknown as DescService;
    const pkg = packageOf(fn);
    const entry =
      options.endpoints.find((e) => e.type === fn.typeName) ?? options.endpoints.find((e) => e.type === undefined && e.package === pkg);
    if (entry === undefined) continue;
    const url = entry.url
      .replaceAll("{type}", fn.typeName)
      .replaceAll("{package}", pkg)
      .replaceAll("{service}", service.name.toLowerCase());
    const id = `${entry.path} ${url}`;
    let invoker = invokers.get(id);
    if (invoker === undefined) {
      invoker = createRemoteInvoker({
        url,
        timeoutMs: entry.timeoutMs,
        limit: node.createLimit(entry.maxConcurrent),
        maxBatch: entry.maxBatch,
        invokeMany: entry.invokeMany,
        retry: entry.retry,
        tls: entry.tls === undefined ? undefined : readTls(entry),
        bearerToken: entry.bearerToken,
        logger: node.logger,
        metrics: node.metrics,
      });
      invokers.set(id, invoker);
    }
    out.push({ fn, invoker });
  }
  for (const entry of options.endpoints) {
    if (types.some((fn) => fn.typeName === entry.type || (entry.type === undefined && packageOf(fn) === entry.package))) continue;
    for (const invoker of invokers.values()) invoker.close();
    const key = entry.type !== undefined ? `type: ${entry.type}` : `package: ${entry.package}`;
    const known = types.map((t) => t.typeName).join(", ") || "none";
    throw new RemoteFunctionsError(
      `${entry.path}: ${key} names no function type of ${options.descriptorsSource} (function types there: ${known}); rebuild the descriptor set with that proto, or fix the name`,
    );
  }
  return out;
}

function packageOf(fn: AnyFunctionType): string {
  return (fn.service as unknown as DescService).file.proto.package;
}

/** The function types (services with `(shoal.v1.function)`) of a descriptor set. */
function functionTypesOf(bytes: Uint8Array, source: string): AnyFunctionType[] {
  let registry: ReturnType<typeof createFileRegistry>;
  try {
    registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, bytes));
  } catch (err) {
    throw new RemoteFunctionsError(
      `${source}: not a descriptor set of the function types (make one with \`buf build -o functions.binpb\`): ${(err as Error).message}`,
    );
  }
  const types: AnyFunctionType[] = [];
  for (const file of registry.files) {
    for (const service of file.services) {
      if (!hasOption(service, functionOption)) continue;
      const stateName = getOption(service, functionOption).state;
      const state = stateName === "" ? undefined : registry.getMessage(stateName);
      if (stateName !== "" && state === undefined) {
        throw new RemoteFunctionsError(`${source}: ${service.typeName}: its state ${stateName} is not in the descriptor set`);
      }
      try {
        types.push(defineFunction(service as never, state));
      } catch (err) {
        throw new RemoteFunctionsError(`${source}: ${(err as Error).message}`);
      }
    }
  }
  return types;
}

function readTls(entry: RemoteEndpointConfig): RemoteInvokerOptions["tls"] {
  const read = (key: "ca" | "cert" | "key") => {
    const file = entry.tls?.[key];
    if (file === undefined) return undefined;
    try {
      return readFileSync(file);
    } catch (err) {
      throw new RemoteFunctionsError(`${entry.path}.tls.${key}: cannot read ${file}: ${(err as Error).message}`);
    }
  };
  return { ca: read("ca"), cert: read("cert"), key: read("key") };
}
