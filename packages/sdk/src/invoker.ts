import type { Message } from "@bufbuild/protobuf";
import type { Address } from "./function-type.js";
import type { CallResult, Envelope, Reply } from "./gen/shoal/v1/protocol_pb.js";

// The runtime's invoker seam. It lives in the SDK because both sides of the
// remote function protocol (function.proto) speak it: the runtime's invokers
// implement it and a function endpoint answers it.

/**
 * Runs handlers for a shard. The shard processor gives it one instance's
 * state and a batch of that instance's queued messages, each with the call
 * results its earlier runs got; it answers, per message in order, what to
 * commit, the calls the handler awaits, or why it failed.
 *
 * It deals in bytes and protocol messages (Envelope, CallResult, Reply), not
 * in handler objects, so that an invoker in another process (a remote
 * function endpoint, `shoal.v1.FunctionService`) implements it unchanged.
 */
export interface Invoker {
  /**
   * Set by an invoker that runs handlers in this process: it may get a
   * request already decoded (`InvokeMessage.decoded`, with an empty payload)
   * and may answer with the reply message itself (`output`), which saves a
   * protobuf round trip per request. Otherwise every request reaches it as
   * bytes and every reply must be bytes.
   */
  readonly inProcess?: boolean;
  /**
   * Runs the messages in order on the state each previous one leaves. Stops
   * after the first message that suspends or fails: the outcomes hold that
   * one last, and the messages after it did not run.
   */
  invoke(request: InvokeRequest): Promise<InvokeResponse>;
}

/** One instance, its committed state and messages to run on it. */
export interface InvokeRequest {
  readonly address: Address;
  /** The committed state, binary protobuf; `undefined` for a new instance or a stateless function. */
  readonly state: Uint8Array | undefined;
  readonly messages: readonly InvokeMessage[];
}

/** A queued message and the results of the calls its earlier runs made. */
export interface InvokeMessage {
  readonly envelope: Envelope;
  /** The call results so far, in call order. */
  readonly journal: readonly CallResult[];
  /**
   * The request already decoded, when it came from an in-process ingress
   * (then the payload may be empty); only an `inProcess` invoker gets it.
   */
  readonly decoded?: Message;
  /** False when only `output` is needed (an in-process waiter, nothing to memoize; `inProcess` invokers only). Default true. */
  readonly encodeReply?: boolean;
}

/** The answer of an invoker: the instance it ran and one outcome per message that ran. */
export interface InvokeResponse {
  /** Must be the request's address: effects for another instance are refused. */
  readonly address: Address;
  readonly outcomes: readonly MessageOutcome[];
}

/**
 * What became of one message.
 * - `done`: the handler returned or threw a ShoalError (`reply` says which);
 *   `effects` commit with it (none with an error reply).
 * - `suspended`: the handler awaits `calls`; run the message again once their
 *   results are in its journal.
 * - `failed`: it threw something else (`retryable`: run it again later), or
 *   its request, state or result cannot be decoded or encoded (not
 *   retryable: every run would fail the same way).
 */
export type MessageOutcome =
  | {
      readonly status: "done";
      readonly reply: Reply;
      readonly effects: Effects;
      /** The reply message itself (in process only), when `encodeReply` was false. */
      readonly output?: Message;
    }
  | { readonly status: "suspended"; readonly calls: readonly AwaitedCall[] }
  | { readonly status: "failed"; readonly retryable: boolean; readonly message: string };

/** What a finished invocation commits besides its reply. */
export interface Effects {
  readonly state: StateEffect;
  readonly sends: readonly SendEffect[];
  /** Cancellation tokens of delayed messages (`ctx.send` returned them). */
  readonly cancels: readonly string[];
  readonly egress: readonly EgressEffect[];
}

export type StateEffect = { readonly kind: "keep" } | { readonly kind: "write"; readonly bytes: Uint8Array } | { readonly kind: "clear" };

/** A one-way message; leaves only once the commit holding it is durable. */
export interface SendEffect {
  /** Deterministic: `invocationId:sN`. */
  readonly id: string;
  readonly target: Address;
  readonly handler: string;
  readonly payload: Uint8Array;
  /** Milliseconds after the commit; 0 for now. */
  readonly delayMs: number;
}

export interface EgressEffect {
  readonly egress: string;
  readonly typeName: string;
  readonly payload: Uint8Array;
  /** Deterministic: `invocationId:eN`. */
  readonly id: string;
}

/** A call the handler awaits, with no result in its journal yet. */
export interface AwaitedCall {
  /** `invocationId/n`. */
  readonly callId: string;
  readonly target: Address;
  readonly handler: string;
  readonly payload: Uint8Array;
}
