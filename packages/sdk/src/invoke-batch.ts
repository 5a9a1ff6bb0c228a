import { Code } from "@connectrpc/connect";
import type { Logger } from "./context.js";
import { errorReply, runInvocation } from "./invocation.js";
import type { EgressEffect, InvokeRequest, InvokeResponse, MessageOutcome, SendEffect, StateEffect } from "./invoker.js";
import type { Implementation } from "./module.js";

/** What {@link invokeBatch} needs from the process that runs the handlers. */
export interface InvokeBatchOptions {
  /** The implementation of a function type; `undefined` when this process has none. */
  lookup(typeName: string): Implementation | undefined;
  /** A logger for one invocation's `ctx.log`, with these fields. Called once per message that runs. */
  invocationLogger(fields: Record<string, unknown>): Logger;
}

/**
 * Runs a batch of one instance's messages with the SDK's invocation model: in
 * order, each on the state the previous one leaves, stopping after the first
 * that suspends or fails. The embedded invoker and a remote function endpoint
 * both run this, so a handler behaves the same wherever it runs.
 *
 * An unknown function type or handler is a `done` outcome with an
 * Unimplemented reply, so the caller gets an error and the batch goes on.
 */
export async function invokeBatch(request: InvokeRequest, options: InvokeBatchOptions): Promise<InvokeResponse> {
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
    const log = options.invocationLogger({ function: fn.typeName, key: request.address.key, handler: info.name, invocation: envelope.id });
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
      issueCall: suspend,
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
        // Most invocations send nothing: no copies of empty lists.
        sends:
          effects.sends.length === 0
            ? noSends
            : effects.sends.map((s) => ({ id: s.id, target: s.target, handler: s.handler, payload: s.payload, delayMs: s.delayMs })),
        cancels: effects.cancels,
        egress:
          effects.egress.length === 0
            ? noEgress
            : effects.egress.map((e) => ({ egress: e.egress, typeName: e.typeName, payload: e.payload, id: e.id })),
      },
    });
    state = nextState(state, effects.state);
  }
  return { address: request.address, outcomes };
}

function nextState(state: Uint8Array | undefined, change: StateEffect): Uint8Array | undefined {
  if (change.kind === "write") return change.bytes;
  return change.kind === "clear" ? undefined : state;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

const noEffects = { state: { kind: "keep" }, sends: [], cancels: [], egress: [] } as const;
const noSends: readonly SendEffect[] = [];
const noEgress: readonly EgressEffect[] = [];

// The runtime sends every call as a message and runs the handler again once its reply is in.
const suspend = () => "suspend" as const;
