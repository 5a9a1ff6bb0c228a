import {
  create,
  type DescMessage,
  fromBinary,
  isMessage,
  type Message,
  type MessageInitShape,
  type MessageShape,
  ScalarType,
  toBinary,
} from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import { Code } from "@connectrpc/connect";
import {
  type Address,
  type AnyFunctionType,
  type HandlerInfo,
  type HandlersOf,
  handlerByLocalName,
  keyOf,
  type Logger,
  ShoalError,
} from "@shoal/sdk";
import { errorReply, formatToken, okReply, type Reply, runInvocation } from "@shoal/sdk/internal";

/** The methods of a function type's service, by TypeScript name (`addItem`). */
type MethodsOf<F> = F extends { readonly service: GenService<infer M extends GenServiceMethods> } ? M : never;

/** The handler names of a function type, as in its handler interface (`"addItem"`). */
export type HandlerName<F> = keyof MethodsOf<F> & string;

/** What a handler of a function type accepts as request: the message or its init shape. */
export type HandlerRequestInit<F, K extends HandlerName<F>> = MessageInitShape<MethodsOf<F>[K]["input"]>;

/** The request message of a handler, as a canned reply function receives it. */
export type HandlerRequest<F, K extends HandlerName<F>> = MessageShape<MethodsOf<F>[K]["input"]>;

/** The reply message of a handler. */
export type HandlerReply<F, K extends HandlerName<F>> = MessageShape<MethodsOf<F>[K]["output"]>;

/** The state message of a function type, `undefined` for a stateless one. */
export type StateOf<F> = F extends { readonly state: infer S } ? (S extends DescMessage ? MessageShape<S> : undefined) : never;

/** What `options.state` accepts: the state message or its init shape (`never` for a stateless function). */
export type StateInitOf<F> = F extends { readonly state: infer S } ? (S extends DescMessage ? MessageInitShape<S> : never) : never;

/** A decoded request of a call whose target is known only by name: fields are read as `unknown`. */
export type UntypedRequest = Message & { readonly [field: string]: unknown };

/**
 * The canned reply of a call made with `ctx.call`:
 * - a value: the reply (a message or its init shape);
 * - a `ShoalError`: the call fails with it;
 * - a function of the call's decoded request returning one of the above (or a
 *   promise of it). A `ShoalError` thrown there fails the call with its code;
 *   anything else thrown fails it with `Code.Internal`, as the runtime does
 *   once a failing callee has used up its retries.
 */
export type CannedReply<Request = UntypedRequest, ReplyInit = object> =
  | ReplyInit
  | ShoalError
  | ((request: Request) => ReplyInit | ShoalError | undefined | Promise<ReplyInit | ShoalError | undefined>);

/** Canned replies by `"<type>.<Rpc>"`, e.g. `"shop.v1.Inventory.Reserve"`. */
export type CannedCalls = Readonly<Record<string, CannedReply>>;

/** Typed canned replies of one function type's handlers, by handler name; see `cannedReplies`. */
export type CannedRepliesOf<F> = {
  readonly [K in HandlerName<F>]?: CannedReply<HandlerRequest<F, K>, MessageInitShape<MethodsOf<F>[K]["output"]>>;
};

/** Options of `runHandler`. */
export interface RunHandlerOptions<F> {
  /** The instance key. Default: the request's `(shoal.v1.key)` field (`""` for a stateless function). */
  readonly key?: string;
  /** The instance's committed state before the run. Default: none (a new instance, default values). */
  readonly state?: StateInitOf<F>;
  /** `ctx.caller`. Default `undefined` (a message from outside the runtime). */
  readonly caller?: Address;
  /**
   * Replies of the calls the handler makes with `ctx.call`, by
   * `"<type>.<Rpc>"`. A call without a canned reply makes `runHandler` reject,
   * naming it. Build typed entries with `cannedReplies(Fn, {...})`.
   */
  readonly calls?: CannedCalls;
  /** `ctx.invocationId`. Default `"test-invocation"`. */
  readonly invocationId?: string;
}

/** A call the handler made with `ctx.call`. */
export interface RecordedCall {
  /** `invocationId/n`. */
  readonly callId: string;
  readonly target: Address;
  /** The rpc name, e.g. `Reserve`. */
  readonly handler: string;
  /** The decoded request. */
  readonly request: Message;
}

/** A message the handler sent with `ctx.send`. */
export interface RecordedSend {
  readonly target: Address;
  /** The rpc name, e.g. `RemindAbandoned`. */
  readonly handler: string;
  /** The decoded request. */
  readonly request: Message;
  /** The delay; 0 for now. */
  readonly delayMs: number;
  /** The cancellation token `ctx.send` returned. */
  readonly token: string;
}

/** A message the handler emitted with `ctx.egress`. */
export interface RecordedEgress {
  /** The egress name. */
  readonly name: string;
  /** The decoded message. */
  readonly message: Message;
  /** The message's stable id (`invocationId:eN`). */
  readonly id: string;
}

/** A line the handler logged with `ctx.log`. */
export interface RecordedLog {
  readonly level: "debug" | "info" | "warn" | "error";
  readonly message: string;
  readonly fields: Record<string, unknown> | undefined;
}

/** What one run of a handler did. */
export interface RunHandlerResult<Reply, State> {
  /** The reply, when the handler returned. */
  readonly reply?: Reply;
  /** The error the caller would receive: a `ShoalError` the handler threw (or a call failure it let through). */
  readonly error?: ShoalError;
  /**
   * Anything else the handler threw. The runtime would retry the invocation
   * and, after the configured attempts, answer `Code.Internal`; `runHandler`
   * runs the handler once and returns what it threw.
   */
  readonly thrown?: unknown;
  /**
   * The state after the run as the runtime would commit it: the written state
   * after a write, `undefined` after `ctx.clearState()`, else the initial state
   * (`undefined` for a new instance and for stateless functions).
   */
  readonly state: State | undefined;
  /** Whether the run writes, clears or keeps the state (always `"keep"` when the handler failed). */
  readonly stateChange: "keep" | "write" | "clear";
  /** The calls the handler made, in order; they ran even if the handler failed afterwards. */
  readonly calls: readonly RecordedCall[];
  /** The messages it sent; empty when the handler failed (nothing would be sent). */
  readonly sends: readonly RecordedSend[];
  /** The cancellation tokens it cancelled; empty when the handler failed. */
  readonly cancels: readonly string[];
  /** The egress messages it emitted; empty when the handler failed. */
  readonly egress: readonly RecordedEgress[];
  /** What it logged with `ctx.log`. */
  readonly logs: readonly RecordedLog[];
}

/**
 * Runs one handler once against a mock context, without a runtime: for unit
 * tests of a handler's logic. The handler runs exactly as the runtime runs it
 * (the SDK's invocation model: the same request and state decoding, effect
 * recording and reply encoding), with these differences:
 * - `ctx.call` does not reach another function: each call gets its reply from
 *   `options.calls`, and a call without one makes `runHandler` reject;
 * - nothing is committed or delivered: sends, cancellations and egress
 *   messages are returned in the result;
 * - a handler that throws something other than a `ShoalError` is not retried:
 *   what it threw is returned as `thrown`.
 *
 * To test functions together, through the real runtime, use `createTestEnv`.
 *
 * @example
 * const result = await runHandler(CartFunction, cart, "addItem", { userId: "joe", sku: "socks", quantity: 2 }, {
 *   state: { items: { hats: 1 } },
 *   calls: { "shop.v1.Inventory.Reserve": { reserved: true, available: 8 } },
 * });
 * expect(result.reply?.items).toEqual({ hats: 1, socks: 2 });
 * expect(result.stateChange).toBe("write");
 * expect(result.sends[0]?.delayMs).toBe(24 * 3600_000);
 */
export async function runHandler<F extends AnyFunctionType, K extends keyof MethodsOf<F> & string>(
  fn: F,
  handlers: HandlersOf<F>,
  handler: K,
  request: HandlerRequestInit<F, K>,
  options: RunHandlerOptions<F> = {},
): Promise<RunHandlerResult<HandlerReply<F, K>, StateOf<F>>> {
  // (K is spelled out rather than HandlerName<F> so that a wrong name's type error lists the handlers.)
  const info = handlerNamed(fn, handler);
  const message = create(info.method.input, request as never) as Message;
  const key = options.key ?? keyOf(info, message) ?? "";
  if (fn.state !== undefined && key === "") {
    throw new Error(
      `runHandler: ${fn.typeName}.${info.name}: the request's key field ${info.keyField?.name ?? "(none)"} is empty; set it or pass options.key`,
    );
  }
  const stateSchema = fn.state as DescMessage | undefined;
  if (stateSchema === undefined && options.state !== undefined) {
    throw new Error(`runHandler: ${fn.typeName} is stateless; options.state does not apply`);
  }
  const initialState =
    stateSchema !== undefined && options.state !== undefined
      ? toBinary(stateSchema, create(stateSchema, options.state as never))
      : undefined;

  const calls: RecordedCall[] = [];
  const missing: string[] = [];
  const invalid: string[] = [];
  const logs: RecordedLog[] = [];
  const canned = options.calls ?? {};

  const outcome = await runInvocation({
    fn,
    handlers: handlers as object,
    handler: info,
    invocationId: options.invocationId ?? "test-invocation",
    self: { type: fn.typeName, key },
    caller: options.caller,
    payload: toBinary(info.method.input, message),
    state: initialState,
    journal: [],
    log: recordingLogger(logs),
    issueCall: async (call): Promise<Reply> => {
      const name = `${call.target.type}.${call.handler}`;
      const { method, request: callRequest } = call;
      calls.push({ callId: call.callId, target: call.target, handler: call.handler, request: callRequest });
      if (!Object.hasOwn(canned, name)) {
        missing.push(name);
        throw new Error(`runHandler: no canned reply for the call to ${name}`);
      }
      let replied: unknown = canned[name];
      try {
        if (typeof replied === "function") replied = await (replied as (r: Message) => unknown)(callRequest);
      } catch (err) {
        replied = err instanceof ShoalError ? err : new ShoalError(Code.Internal, err instanceof Error ? err.message : String(err));
      }
      if (replied instanceof ShoalError) return errorReply(replied.code, replied.message);
      let payload: Uint8Array;
      try {
        const problem = checkInit(method.output, replied ?? {});
        if (problem !== undefined) throw new Error(problem);
        payload = toBinary(method.output, create(method.output, (replied ?? {}) as never));
      } catch (err) {
        const text = `runHandler: the canned reply for ${name} is not a ${method.output.typeName}: ${err instanceof Error ? err.message : String(err)}`;
        invalid.push(text);
        throw new Error(text);
      }
      return okReply(payload);
    },
  });

  if (missing.length > 0) {
    const given = Object.keys(canned);
    throw new Error(
      `runHandler: ${fn.typeName}.${info.name} called ${missing.join(", ")} without a canned reply; ` +
        `add it to options.calls (given: ${given.length > 0 ? given.join(", ") : "none"})`,
    );
  }
  if (invalid[0] !== undefined) throw new Error(invalid[0]);
  if (outcome.status === "suspended" || outcome.status === "interrupted") {
    // issueCall never suspends, and rejects only for an invalid canned reply (reported above).
    throw new Error(`runHandler: ${fn.typeName}.${info.name} ${outcome.status} unexpectedly`);
  }

  const keptState = stateSchema !== undefined && initialState !== undefined ? fromBinary(stateSchema, initialState) : undefined;
  const base = { calls, logs };
  if (outcome.status === "retry") {
    return {
      ...base,
      thrown: outcome.error,
      state: keptState as StateOf<F> | undefined,
      stateChange: "keep",
      sends: [],
      cancels: [],
      egress: [],
    };
  }

  const { reply, effects } = outcome;
  if (reply.result.case !== "ok") {
    const failure = reply.result.value;
    return {
      ...base,
      error: new ShoalError(failure?.code ?? Code.Internal, failure?.message ?? ""),
      state: keptState as StateOf<F> | undefined,
      stateChange: "keep",
      sends: [],
      cancels: [],
      egress: [],
    };
  }

  const state =
    effects.state.kind === "write" && stateSchema !== undefined
      ? fromBinary(stateSchema, effects.state.bytes)
      : effects.state.kind === "clear"
        ? undefined
        : keptState;
  return {
    ...base,
    reply: (outcome.output ?? fromBinary(info.method.output, reply.result.value)) as HandlerReply<F, K>,
    state: state as StateOf<F> | undefined,
    stateChange: effects.state.kind,
    sends: effects.sends.map((s) => ({
      target: s.target,
      handler: s.handler,
      request: s.request,
      delayMs: s.delayMs,
      token: formatToken({ target: s.target, messageId: s.id }),
    })),
    cancels: [...effects.cancels],
    egress: effects.egress.map((e) => ({ name: e.egress, message: e.message, id: e.id })),
  };
}

/**
 * Typed canned replies for `runHandler`'s `calls` option: the requests and
 * replies are checked against the target function's handlers. Spread several
 * into one `calls` object.
 *
 * @example
 * await runHandler(CartFunction, cart, "checkout", { userId: "eve" }, {
 *   state: { items: { socks: 150 } },
 *   calls: cannedReplies(FraudFunction, {
 *     check: (req) => ({ approved: req.totalQuantity <= 100, reason: "too many items" }),
 *   }),
 * });
 */
export function cannedReplies<F extends AnyFunctionType>(fn: F, replies: CannedRepliesOf<F>): CannedCalls {
  const calls: Record<string, CannedReply> = {};
  for (const [localName, reply] of Object.entries(replies as Record<string, CannedReply | undefined>)) {
    if (reply === undefined) continue;
    calls[`${fn.typeName}.${handlerNamed(fn, localName).name}`] = reply;
  }
  return calls;
}

/**
 * Catches the mistakes of a hand-written reply that `create` lets through: a
 * field the message does not have (a typo) and a scalar of the wrong type.
 */
function checkInit(schema: DescMessage, init: unknown): string | undefined {
  if (typeof init !== "object" || init === null || Array.isArray(init)) return `expected an object, got ${JSON.stringify(init)}`;
  if (isMessage(init)) return init.$typeName === schema.typeName ? undefined : `got a ${init.$typeName}`;
  for (const [name, value] of Object.entries(init)) {
    if (value === undefined || schema.oneofs.some((o) => o.localName === name)) continue;
    const field = schema.fields.find((f) => f.localName === name);
    if (field === undefined) return `it has no field ${name} (fields: ${schema.fields.map((f) => f.localName).join(", ")})`;
    let expected: string | undefined;
    if (field.fieldKind === "list") expected = Array.isArray(value) ? undefined : "an array";
    else if (field.fieldKind === "enum") expected = typeof value === "number" ? undefined : "a number (enum)";
    else if (field.fieldKind === "scalar") {
      const type = typeof value;
      switch (field.scalar) {
        case ScalarType.STRING:
          expected = type === "string" ? undefined : "a string";
          break;
        case ScalarType.BOOL:
          expected = type === "boolean" ? undefined : "a boolean";
          break;
        case ScalarType.BYTES:
          expected = value instanceof Uint8Array ? undefined : "a Uint8Array";
          break;
        case ScalarType.INT64:
        case ScalarType.UINT64:
        case ScalarType.SINT64:
        case ScalarType.FIXED64:
        case ScalarType.SFIXED64:
          expected = type === "bigint" || type === "number" || type === "string" ? undefined : "a bigint";
          break;
        default:
          expected = type === "number" ? undefined : "a number";
      }
    }
    if (expected !== undefined)
      return `field ${name}: expected ${expected}, got ${typeof value === "bigint" ? `${value}n` : JSON.stringify(value)}`;
  }
  return undefined;
}

function handlerNamed(fn: AnyFunctionType, localName: string): HandlerInfo {
  const info = handlerByLocalName(fn, localName);
  if (info !== undefined) return info;
  const known = [...fn.handlers.values()].map((h) => h.localName).join(", ");
  throw new Error(`${fn.typeName} has no handler ${localName} (it has: ${known})`);
}

function recordingLogger(logs: RecordedLog[]): Logger {
  const at =
    (level: RecordedLog["level"]) =>
    (message: string, fields?: Record<string, unknown>): void => {
      logs.push({ level, message, fields });
    };
  return { debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error") };
}
