import type { DescMessage, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import type { DeepReadonly } from "./deep-readonly.js";
import type { Address, FunctionType } from "./function-type.js";

/** A structured logger bound to the invocation (function, key, invocation id). */
export interface Logger {
  debug(message: string, fields?: Record<string, unknown>): void;
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
  error(message: string, fields?: Record<string, unknown>): void;
}

/** Request/reply access to another function's handlers, from `ctx.call(Fn)`. */
export type FunctionCaller<Svc> =
  Svc extends GenService<infer M extends GenServiceMethods>
    ? {
        [K in keyof M]: (request: MessageInitShape<M[K]["input"]>) => Promise<MessageShape<M[K]["output"]>>;
      }
    : never;

/** One-way access to another function's handlers, from `ctx.send(Fn)`. */
export type FunctionSender<Svc> =
  Svc extends GenService<infer M extends GenServiceMethods>
    ? {
        [K in keyof M]: (request: MessageInitShape<M[K]["input"]>) => CancellationToken;
      }
    : never;

/** Options of `ctx.send`. */
export interface SendOptions {
  /** Deliver after this many milliseconds (a durable timer). Default: now. */
  readonly delay?: number;
}

/**
 * Identifies a sent message, so that a delayed one can be cancelled with
 * `ctx.cancel(token)` before it is delivered. Tokens are plain strings: store
 * them in state.
 */
export type CancellationToken = string;

/** What every handler's context offers, whatever the function's state. */
export interface BaseContext {
  /** The instance key (the request's `(shoal.v1.key)` field); `""` for stateless functions. */
  readonly key: string;
  /** This instance's address. */
  readonly self: Address;
  /** The calling instance, or `undefined` when the message came from outside (a client, a timer of the runtime). */
  readonly caller: Address | undefined;
  /**
   * The id of this invocation. It is stable across retries and re-runs of the
   * same message, so it works as an idempotency key for side effects.
   */
  readonly invocationId: string;
  /** A logger bound to this invocation. */
  readonly log: Logger;

  /**
   * Calls another function's handler and awaits its reply.
   *
   * The call gets a deterministic id (`invocationId/n`, n counting calls in
   * program order) and the callee memoizes its reply under it: when this
   * handler is re-run (after a retry or a crash) it gets the memoized reply and
   * the callee does not run again. So a handler that awaits calls must be
   * deterministic up to its calls: it must make the same calls, to the same
   * targets with the same requests, in the same order. A re-run that differs
   * fails the invocation with `Code.Internal` naming the call.
   *
   * While the call is pending this instance stays locked. A call back to an
   * instance that is locked awaiting this chain (A -> B -> A, exclusive
   * handlers) fails at once with `Code.FailedPrecondition` naming the cycle.
   * A `ShoalError` thrown by the callee rejects the promise with the same code.
   *
   * @example
   * const ok = await ctx.call(InventoryFunction).reserve({ sku: req.sku, quantity: req.quantity });
   * if (!ok.reserved) throw new ShoalError(Code.FailedPrecondition, `out of ${req.sku}`);
   */
  call<Svc extends GenService<GenServiceMethods>>(fn: FunctionType<Svc, DescMessage | undefined, unknown>): FunctionCaller<Svc>;

  /**
   * Sends a one-way message to another function's handler (or to this one).
   * Nothing is sent until this invocation commits: if the handler fails, the
   * message is never delivered; once it commits, it is delivered exactly once.
   * With `{ delay }` the message is a durable timer that survives restarts.
   * Returns a token for `ctx.cancel`.
   *
   * @example
   * ctx.state.reminder = ctx.send(CartFunction, { delay: 24 * 3600_000 }).remind({ userId: ctx.key });
   */
  send<Svc extends GenService<GenServiceMethods>>(
    fn: FunctionType<Svc, DescMessage | undefined, unknown>,
    options?: SendOptions,
  ): FunctionSender<Svc>;

  /**
   * Cancels a delayed message sent earlier with `ctx.send(.., { delay })`. The
   * cancellation commits with this invocation; a message already delivered is
   * not affected. A string that is not a token `ctx.send` returned is ignored
   * with a warning in the log.
   *
   * @example
   * if (ctx.state.reminder) ctx.cancel(ctx.state.reminder);
   */
  cancel(token: CancellationToken): void;

  /**
   * Emits a message to a named egress (configured in `shoal.yaml`; `stdout`
   * always exists). Emitted only when this invocation commits. Delivery to the
   * outside is at-least-once unless the egress offers idempotency (each message
   * carries a stable id).
   *
   * @example
   * ctx.egress("orders", OrderPlacedSchema, { orderId, total });
   */
  egress<Desc extends DescMessage>(name: string, schema: Desc, message: MessageInitShape<Desc>): void;
}

/** The context of an exclusive handler: it may read and write the instance's state. */
export interface Context<State extends DescMessage> extends BaseContext {
  /**
   * The instance's state, mutable. Changes commit atomically with the
   * invocation's other effects when the handler returns; if it throws, they are
   * discarded. A new instance starts with the message's default values.
   *
   * @example
   * ctx.state.items[req.sku] = (ctx.state.items[req.sku] ?? 0) + req.quantity;
   */
  state: MessageShape<State>;
  /** Deletes the instance's state when the invocation commits. */
  clearState(): void;
}

/**
 * The context of a shared (read-only) handler: it sees the last committed
 * state and cannot write it.
 */
export interface SharedContext<State extends DescMessage> extends BaseContext {
  /** The last committed state, read-only. */
  readonly state: DeepReadonly<MessageShape<State>>;
}

/** The context of a stateless function's handler. */
export type StatelessContext = BaseContext;
