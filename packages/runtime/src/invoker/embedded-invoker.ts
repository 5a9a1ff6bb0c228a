import type { AnyFunctionType, Logger } from "@shoal/sdk";
import { invokeBatch } from "@shoal/sdk/internal";
import { lazyLogger } from "../observe/logger.js";
import type { Invoker } from "./invoker.js";

/** A registered function type and its handlers. */
export interface RegisteredFunction {
  readonly fn: AnyFunctionType;
  readonly handlers: object;
}

/** What the embedded invoker needs from its node. */
export interface EmbeddedInvokerOptions {
  lookup(typeName: string): RegisteredFunction | undefined;
  /** A logger for one invocation's `ctx.log`, with these fields. */
  invocationLogger(fields: Record<string, unknown>): Logger;
}

/**
 * Runs handlers in this process with the SDK's invocation model, the same
 * code `@shoal/testing` and a remote endpoint run. A handler's `ctx.call`
 * suspends its run: the shard processor sends the call as a message and runs
 * the handler again once the reply is in its journal.
 */
export function createEmbeddedInvoker(options: EmbeddedInvokerOptions): Invoker {
  const batchOptions = {
    lookup: options.lookup,
    invocationLogger: (fields: Record<string, unknown>) => lazyLogger(() => options.invocationLogger(fields)),
  };
  return {
    inProcess: true,
    invoke: (request) => invokeBatch(request, batchOptions),
  };
}
