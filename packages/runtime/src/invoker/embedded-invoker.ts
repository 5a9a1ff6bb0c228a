import { Code } from "@connectrpc/connect";
import type { AnyFunctionType, Logger } from "@shoal/sdk";
import { errorReply, runInvocation } from "@shoal/sdk/internal";
import { lazyLogger } from "../observe/logger.js";
import type { InvokeRequest, Invoker, MessageOutcome, StateEffect } from "./invoker.js";

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
  return {
    inProcess: true,
    async invoke(request: InvokeRequest) {
      const outcomes: MessageOutcome[] = [];
      let state = request.state;
      for (const message of request.messages) {
        const { envelope } = message;
        const registered = options.lookup(request.address.type);
        const info = registered?.fn.handlers.get(envelope.handler);
        if (registered === undefined || info === undefined) {
          const reply = errorReply(Code.Unimplemented, `unknown function or handler ${request.address.type}.${envelope.handler}`);
          outcomes.push({ status: "done", reply, effects: noEffects });
          continue;
        }
        const { fn, handlers } = registered;
        const caller = envelope.caller;
        const log = lazyLogger(() =>
          options.invocationLogger({ function: fn.typeName, key: request.address.key, handler: info.name, invocation: envelope.id }),
        );
        const outcome = await runInvocation({
          fn,
          handlers,
          handler: info,
          invocationId: envelope.id,
          self: { type: request.address.type, key: request.address.key },
          caller: caller !== undefined && caller.type !== "" ? { type: caller.type, key: caller.key } : undefined,
          payload: envelope.payload,
          request: message.decoded,
          encodeReply: message.encodeReply,
          canSuspend: true,
          state: fn.state !== undefined ? state : undefined,
          journal: message.journal,
          log,
          issueCall: () => "suspend",
        });
        if (outcome.status === "suspended") {
          const calls = outcome.pending.map((c) => ({ callId: c.callId, target: c.target, handler: c.handler, payload: c.payload }));
          outcomes.push({ status: "suspended", calls });
          break;
        }
        if (outcome.status !== "done") {
          outcomes.push({ status: "failed", retryable: true, message: errorText(outcome.error) });
          break;
        }
        if (outcome.poison) {
          const failure = outcome.reply.result.case === "error" ? outcome.reply.result.value.message : "poison";
          outcomes.push({ status: "failed", retryable: false, message: failure });
          break;
        }
        const effects = outcome.effects;
        outcomes.push({
          status: "done",
          reply: outcome.reply,
          output: outcome.output,
          effects: {
            state: effects.state,
            sends: effects.sends.map((s) => ({ id: s.id, target: s.target, handler: s.handler, payload: s.payload, delayMs: s.delayMs })),
            cancels: effects.cancels,
            egress: effects.egress.map((e) => ({ egress: e.egress, typeName: e.typeName, payload: e.payload, id: e.id })),
          },
        });
        state = nextState(state, effects.state);
      }
      return { address: request.address, outcomes };
    },
  };
}

function nextState(state: Uint8Array | undefined, change: StateEffect): Uint8Array | undefined {
  if (change.kind === "write") return change.bytes;
  return change.kind === "clear" ? undefined : state;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

const noEffects = { state: { kind: "keep" }, sends: [], cancels: [], egress: [] } as const;
