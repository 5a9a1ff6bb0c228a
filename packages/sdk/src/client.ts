import type { DescMessage, DescService, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import { Code, type CallOptions as ConnectCallOptions, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import type { FunctionType } from "./function-type.js";
import { headers } from "./headers.js";

/** Options of a request/reply call from outside the runtime. */
export interface ClientCallOptions {
  /**
   * A retry with the same key gets the first reply instead of running the
   * handler again; the same key with a different request is rejected.
   */
  readonly idempotencyKey?: string;
  /** Give up after this many milliseconds (`DeadlineExceeded`). Default: none. */
  readonly timeoutMs?: number;
  readonly signal?: AbortSignal;
  /** Extra request headers. */
  readonly headers?: Headers | Record<string, string> | [string, string][];
}

/** Options of a one-way send from outside the runtime. */
export interface ClientSendOptions extends ClientCallOptions {
  /** Deliver after this many milliseconds (a durable timer). Default: now. */
  readonly delay?: number;
}

/** What a one-way send returns once the message is durably accepted. */
export interface SendReceipt {
  /** The accepted message's id. */
  readonly messageId: string;
}

/** A typed client of a function type, for callers outside the runtime. */
export type FunctionClient<Svc> =
  Svc extends GenService<infer M extends GenServiceMethods>
    ? {
        [K in keyof M]: (request: MessageInitShape<M[K]["input"]>, options?: ClientCallOptions) => Promise<MessageShape<M[K]["output"]>>;
      } & {
        /** One-way sends: each resolves when the runtime has durably accepted the message. */
        readonly send: {
          [K in keyof M]: (request: MessageInitShape<M[K]["input"]>, options?: ClientSendOptions) => Promise<SendReceipt>;
        };
      }
    : never;

/**
 * Creates a typed client of a function type over a Connect transport
 * (`createConnectTransport` or `createGrpcTransport` from
 * `@connectrpc/connect-node`). Generated `createXClient` functions call this.
 *
 * A request whose connection breaks before its answer arrives (the runtime
 * stopped or crashed, or closed a keep-alive connection just as the request
 * went out on it) fails with `Unavailable`: whether it ran is unknown, and a
 * retry with the same `idempotencyKey` runs it at most once.
 */
export function createFunctionClient<Svc extends GenService<GenServiceMethods>>(
  fn: FunctionType<Svc, DescMessage | undefined, unknown>,
  transport: Transport,
): FunctionClient<Svc> {
  const service = fn.service as unknown as DescService;
  const connectClient = createClient(service, transport) as unknown as Record<
    string,
    (request: unknown, options?: ConnectCallOptions) => Promise<unknown>
  >;
  const calls: Record<string, unknown> = {};
  const sends: Record<string, unknown> = {};
  for (const method of service.methods) {
    const invoke = connectClient[method.localName];
    if (invoke === undefined) continue;
    calls[method.localName] = (request: unknown, options?: ClientCallOptions) =>
      invoke(request, toConnectOptions(options, false)).catch((err) => rethrowLostConnection(err, options?.signal));
    sends[method.localName] = async (request: unknown, options?: ClientSendOptions): Promise<SendReceipt> => {
      let messageId = "";
      await invoke(request, {
        ...toConnectOptions(options, true),
        onHeader: (h: Headers) => {
          messageId = h.get(headers.messageId) ?? "";
        },
      }).catch((err) => rethrowLostConnection(err, options?.signal));
      return { messageId };
    };
  }
  calls.send = sends;
  return calls as FunctionClient<Svc>;
}

function toConnectOptions(options: ClientSendOptions | undefined, send: boolean): ConnectCallOptions & { headers: Headers } {
  const h = new Headers(options?.headers);
  if (options?.idempotencyKey !== undefined) h.set(headers.idempotencyKey, options.idempotencyKey);
  if (send) {
    h.set(headers.send, "1");
    if (options?.delay !== undefined) h.set(headers.delayMs, String(Math.max(0, Math.round(options.delay))));
  }
  return { headers: h, timeoutMs: options?.timeoutMs, signal: options?.signal };
}

/**
 * Node.js error codes of a connection that broke under a request: the peer
 * closed or reset it. connect-node codes them as it would on a server, where
 * they mean the client went away: `Aborted` (ECONNRESET) or `Internal` (EPIPE,
 * a write to a socket the runtime had closed). On the client they mean the
 * runtime went away, a transient condition (DESIGN §7), so `Unavailable`.
 */
const lostConnection = new Set(["EPIPE", "ECONNRESET", "ECONNABORTED", "ERR_STREAM_PREMATURE_CLOSE"]);

/**
 * connect-node's error for an HTTP/2 stream closed with CANCEL, as Node closes
 * the streams of a session whose connection is gone: `Canceled`, although the
 * caller cancelled nothing.
 */
const cancelledStream = /^http\/2 stream closed with error code CANCEL\b/;

/** Rethrows a broken connection as `Unavailable`, anything else as it is. */
function rethrowLostConnection(err: unknown, signal: AbortSignal | undefined): never {
  if (err instanceof ConnectError && brokeConnection(err, signal)) {
    throw new ConnectError(
      `the connection to the runtime broke before its answer (${err.rawMessage}); the request may or may not have run: retry it, with the same Idempotency-Key to run it at most once`,
      Code.Unavailable,
      err.metadata,
      undefined,
      err,
    );
  }
  throw err;
}

function brokeConnection(err: ConnectError, signal: AbortSignal | undefined): boolean {
  if (err.code === Code.Canceled) return signal?.aborted !== true && err.cause === undefined && cancelledStream.test(err.rawMessage);
  if (err.code === Code.Unavailable) return false;
  // Only the client's own errors carry a Node.js error as cause; an answer of the runtime has none.
  const seen = new Set<unknown>();
  for (let cause = err.cause; cause instanceof Error && !seen.has(cause); cause = cause.cause) {
    seen.add(cause);
    const code = (cause as Error & { code?: unknown }).code;
    if (typeof code === "string" && lostConnection.has(code)) return true;
  }
  return false;
}
