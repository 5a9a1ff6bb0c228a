import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Logger } from "@shoal/sdk";
import { FunctionService, invokeRequestToProto, invokeResponseFromProto } from "@shoal/sdk/internal";
import { defaults } from "../config/defaults.js";
import { createH2UnaryClient } from "./h2-unary-client.js";
import type { InvokeRequest, InvokeResponse, Invoker } from "./invoker.js";
import { checkInvokeResponse } from "./response-check.js";

/** Options of `createRemoteInvoker`: one remote function endpoint. */
export interface RemoteInvokerOptions {
  /** The endpoint's base URL: `http://` (HTTP/2 without TLS, h2c) or `https://`. */
  readonly url: string;
  /** Time one Invoke request may take before it is abandoned and retried, in ms. */
  readonly timeoutMs: number;
  /**
   * The cap on requests in flight at once, an InvokeMany counting as one
   * (`maxConcurrent`, a counting semaphore): more wait for one to finish, and
   * none is dropped.
   */
  readonly limit: { acquire(): Promise<void>; release(): void };
  /** Queued messages of one instance the shard may send in one Invoke request. */
  readonly maxBatch: number;
  /**
   * Invocations of distinct instances sent together in one InvokeMany request:
   * at most `maxRequests` (default 32) and `maxBytes` of encoded requests
   * (default 4 MiB; a larger request goes alone).
   */
  readonly invokeMany?: { readonly maxRequests?: number; readonly maxBytes?: number };
  /** Attempts of one Invoke request (the first included), first delay, upper bound of the doubling delay. */
  readonly retry: { readonly maxAttempts: number; readonly initialDelayMs: number; readonly maxDelayMs: number };
  /** PEM contents: a CA to trust instead of the system's, a client certificate and key for mTLS. */
  readonly tls?: { readonly ca?: string | Buffer; readonly cert?: string | Buffer; readonly key?: string | Buffer };
  /** Sent as `Authorization: Bearer <token>` with every request. */
  readonly bearerToken?: string;
  /** Where each failed request gets one warning naming the endpoint. */
  readonly logger: Logger;
  /** Counts failed and answered requests. */
  readonly metrics: {
    remoteInvokeFailed(endpoint: string, reason: string): void;
    remoteInvoked(endpoint: string, messages: number): void;
  };
}

/** An invoker whose handlers run in a remote function endpoint (`shoal.v1.FunctionService`). */
export interface RemoteInvoker extends Invoker {
  /** The endpoint's URL, as logs and metrics name it. */
  readonly endpoint: string;
  /** Queued messages of one instance per Invoke request. */
  readonly maxBatch: number;
  /** Closes the endpoint's connections. */
  close(): void;
}

/** Why one Invoke request failed, as logs and the metric's `reason` label name it. */
interface Fault {
  readonly reason: string;
  readonly message: string;
}

/**
 * Creates an invoker that runs handlers in a remote function endpoint over
 * Connect (binary protobuf, HTTP/2). The state goes out with the request and
 * the effects come back in the response; nothing commits until the shard
 * processor has a valid answer, so a request that times out, is refused,
 * fails with a 5xx, or is answered with garbage (undecodable, another protocol
 * version, another instance, more or fewer outcomes than messages) is sent
 * again as it was, with backoff, up to `retry.maxAttempts`. Then the run
 * counts as one failed handler run, which the node's retry policy takes over.
 * At most as many requests as `limit` allows are in flight; more wait their turn.
 *
 * Invocations of distinct instances that are ready in the same turn of the
 * event loop, or while every slot of `limit` is taken, go in one InvokeMany
 * request (a batch of one stays Invoke): each keeps its own answer, faults
 * and retries, and an endpoint that does not serve InvokeMany (an older SDK)
 * is sent Invoke from then on.
 */
export function createRemoteInvoker(options: RemoteInvokerOptions): RemoteInvoker {
  const endpoint = options.url;
  // Invoke goes straight on one HTTP/2 session (h2-unary-client.ts), not through Connect's generic client.
  const invokeCall = directInvoke(options);
  const { maxAttempts, initialDelayMs, maxDelayMs } = options.retry;

  async function attempt(request: InvokeRequest): Promise<InvokeResponse | Fault> {
    try {
      const answer = await invokeCall.invoke(invokeRequestToProto(request), options.timeoutMs);
      const response = invokeResponseFromProto(answer);
      const invalid = checkInvokeResponse(request, response);
      if (invalid !== undefined) return invalid;
      return response;
    } catch (err) {
      return faultOf(err, options.timeoutMs);
    }
  }

  return {
    endpoint,
    maxBatch: options.maxBatch,
    async invoke(request) {
      const { type, key } = request.address;
      const what = `Invoke of ${request.messages.length} message(s) for ${type}/${key}`;
      for (let n = 1; ; n++) {
        const result = await attempt(request);
        if (!("reason" in result)) {
          options.metrics.remoteInvoked(endpoint, request.messages.length);
          return result;
        }
        options.metrics.remoteInvokeFailed(endpoint, result.reason);
        if (n >= maxAttempts) {
          const message = `remote function endpoint ${endpoint}: ${what} failed ${n} time(s), last (${result.reason}): ${result.message}; nothing of it was committed (check that the endpoint runs and speaks shoal.v1.FunctionService, or raise functions.remote timeoutMs / retry.maxAttempts)`;
          options.logger.error(message, { endpoint, reason: result.reason, function: type, key });
          return { address: request.address, outcomes: [{ status: "failed", retryable: true, message }] };
        }
        const delay = Math.min(maxDelayMs, initialDelayMs * 2 ** (n - 1));
        options.logger.warn(
          `remote function endpoint ${endpoint}: ${what} failed (${result.reason}): ${result.message}; nothing of it was committed, sending it again in ${delay} ms (attempt ${n} of ${maxAttempts})`,
          { endpoint, reason: result.reason, function: type, key },
        );
        await new Promise((resolve) => setTimeout(resolve, delay));
      }
    },
    close() {
      invokeCall.close();
    },
  };
}

type ProtoInvokeRequest = ReturnType<typeof invokeRequestToProto>;
type ProtoInvokeResponse = Parameters<typeof invokeResponseFromProto>[0];

/** One Invoke call to the endpoint; rejects with a ConnectError. */
interface InvokeCall {
  invoke(request: ProtoInvokeRequest, timeoutMs: number): Promise<ProtoInvokeResponse>;
  close(): void;
}

/** An invocation waiting for its place in a request to the endpoint. */
interface Queued {
  /** The encoded InvokeRequest. */
  readonly bytes: Uint8Array;
  /** Its instance: a request holds at most one invocation of an instance, so that the address tells the answers apart. */
  readonly instance: string;
  readonly timeoutMs: number;
  readonly resolve: (response: ProtoInvokeResponse) => void;
  readonly reject: (error: ConnectError) => void;
}

const invokeMethod = FunctionService.method.invoke;
const manyMethod = FunctionService.method.invokeMany;
const invokePath = `/${FunctionService.typeName}/${invokeMethod.name}`;
const manyPath = `/${FunctionService.typeName}/${manyMethod.name}`;

/**
 * Invoke and InvokeMany on one HTTP/2 session. An invocation joins a queue,
 * flushed when the current turn of the event loop ends (setImmediate: no
 * waiting timer, so a lone invocation goes at once) and a slot of `limit` is
 * free; a flush takes what has queued by then, so while every slot is taken
 * the queue grows into the next request.
 */
function directInvoke(options: RemoteInvokerOptions): InvokeCall {
  const token = options.bearerToken;
  const h2 = createH2UnaryClient({
    url: options.url,
    tls: options.tls,
    headers: token === undefined ? undefined : { authorization: `Bearer ${token}` },
    idleTimeoutMs: 60_000,
  });
  const limit = options.limit;
  const maxRequests = options.invokeMany?.maxRequests ?? defaults.remote.invokeManyMaxRequests;
  const maxBytes = options.invokeMany?.maxBytes ?? defaults.remote.invokeManyMaxBytes;
  /** False once the endpoint answered InvokeMany with Unimplemented (an older SDK): Invoke only from then on. */
  let servesMany = true;
  let queue: Queued[] = [];
  /** A flush is scheduled or waits for a slot; one at a time, so that what queues meanwhile goes together. */
  let flushing = false;

  function schedule() {
    if (flushing || queue.length === 0) return;
    flushing = true;
    setImmediate(flush);
  }

  async function flush() {
    await limit.acquire();
    flushing = false;
    const batch = take();
    schedule();
    try {
      if (batch.length === 1) await sendOne(batch[0] as Queued);
      else if (batch.length > 1) await sendMany(batch);
    } finally {
      limit.release();
    }
  }

  /** The next request's invocations: in queue order, distinct instances, within the bounds. */
  function take(): Queued[] {
    const first = queue[0];
    if (first === undefined) return [];
    if (!servesMany || queue.length === 1) {
      queue.shift();
      return [first];
    }
    const batch: Queued[] = [];
    const rest: Queued[] = [];
    const instances = new Set<string>();
    let bytes = 0;
    let i = 0;
    for (; i < queue.length && batch.length < maxRequests; i++) {
      const q = queue[i] as Queued;
      if ((batch.length === 0 || bytes + q.bytes.byteLength <= maxBytes) && !instances.has(q.instance)) {
        batch.push(q);
        instances.add(q.instance);
        bytes += q.bytes.byteLength;
      } else {
        rest.push(q);
      }
    }
    queue = i === queue.length ? rest : rest.concat(queue.slice(i));
    return batch;
  }

  async function sendOne(q: Queued) {
    try {
      q.resolve(decode(invokeMethod.output, await h2.call(invokePath, q.bytes, q.timeoutMs)));
    } catch (err) {
      q.reject(ConnectError.from(err));
    }
  }

  async function sendMany(batch: Queued[]) {
    let results: ReturnType<typeof decode<typeof manyMethod.output>>["results"];
    try {
      const timeoutMs = Math.min(...batch.map((q) => q.timeoutMs));
      results = decode(manyMethod.output, await h2.call(manyPath, manyBody(batch), timeoutMs)).results;
    } catch (err) {
      const error = ConnectError.from(err);
      if (error.code === Code.Unimplemented) {
        // An endpoint of an older SDK: these and all later invocations go as Invoke.
        servesMany = false;
        options.logger.info(
          `remote function endpoint ${options.url} does not serve shoal.v1.FunctionService/InvokeMany (${error.message}); sending each invocation in its own Invoke request (upgrade @shoal/sdk in the endpoint for batched requests)`,
          { endpoint: options.url },
        );
        queue = [...batch, ...queue];
        schedule();
        return;
      }
      for (const q of batch) q.reject(error);
      return;
    }
    if (results.length !== batch.length) {
      const error = new ConnectError(
        `the InvokeMany answer holds ${results.length} result(s) for ${batch.length} request(s); an endpoint must answer one per request, in order`,
        Code.Internal,
      );
      for (const q of batch) q.reject(error);
      return;
    }
    batch.forEach((q, i) => {
      const result = (results[i] as (typeof results)[number]).result;
      if (result.case === "response") q.resolve(result.value);
      else if (result.case === "error") q.reject(new ConnectError(result.value.message, result.value.code as Code));
      else q.reject(new ConnectError(`the InvokeMany answer's result ${i} holds neither a response nor an error`, Code.Internal));
    });
  }

  return {
    invoke(request, timeoutMs) {
      return new Promise<ProtoInvokeResponse>((resolve, reject) => {
        const a = request.address;
        queue.push({ bytes: toBinary(invokeMethod.input, request), instance: `${a?.type}/${a?.key}`, timeoutMs, resolve, reject });
        schedule();
      });
    },
    close: () => h2.close(),
  };
}

/** An InvokeManyRequest of already encoded InvokeRequests: each is field 1, length-delimited. */
function manyBody(batch: readonly Queued[]): Uint8Array {
  let size = 0;
  for (const q of batch) size += 1 + varintLength(q.bytes.byteLength) + q.bytes.byteLength;
  const out = new Uint8Array(size);
  let at = 0;
  for (const q of batch) {
    out[at++] = 0x0a;
    for (let n = q.bytes.byteLength; ; n = Math.floor(n / 128)) {
      if (n < 128) {
        out[at++] = n;
        break;
      }
      out[at++] = (n % 128) | 0x80;
    }
    out.set(q.bytes, at);
    at += q.bytes.byteLength;
  }
  return out;
}

function varintLength(n: number): number {
  let length = 1;
  for (; n >= 128; n = Math.floor(n / 128)) length++;
  return length;
}

function decode<T extends typeof invokeMethod.output | typeof manyMethod.output>(schema: T, bytes: Uint8Array) {
  try {
    return fromBinary(schema, bytes);
  } catch (err) {
    // As Connect's client: an answer that does not parse is Internal.
    throw new ConnectError(`parse binary: ${err instanceof Error ? err.message : String(err)}`, Code.Internal);
  }
}

/** Names a failed request's fault from the Connect error the client raised. */
function faultOf(err: unknown, timeoutMs: number): Fault {
  const error = ConnectError.from(err);
  const cause = (error.cause as { code?: unknown } | undefined)?.code;
  if (typeof cause === "string" && /SSL|TLS|CERT/.test(cause)) {
    return {
      reason: "tls",
      message: `the TLS connection failed (${cause}): ${error.rawMessage} (check functions.remote tls: ca trusts the endpoint's certificate; cert and key are the client certificate an mTLS endpoint asks for)`,
    };
  }
  switch (error.code) {
    case Code.DeadlineExceeded:
      return { reason: "timeout", message: `no answer within ${timeoutMs} ms (timeoutMs)` };
    case Code.Unavailable:
      return { reason: "unavailable", message: error.message };
    case Code.FailedPrecondition:
      // Either side refuses a peer of another protocol version this way.
      return { reason: "protocol_version", message: error.message };
    case Code.Internal:
      // An answer that does not decode as a well-formed InvokeResponse.
      return { reason: "garbage", message: `the answer is no valid InvokeResponse: ${error.message}` };
    default:
      return {
        reason: Code[error.code]?.replace(/[A-Z]/g, (c, i: number) => (i === 0 ? c : `_${c}`)).toLowerCase() ?? "error",
        message: error.message,
      };
  }
}
