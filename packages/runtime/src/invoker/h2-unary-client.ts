// Connect unary calls (binary protobuf) straight on one node:http2 session.
// The remote invoker's hot path: Connect's generic client (transport,
// interceptors, abort-signal chains, web Headers, a sentinel ConnectError per
// call) cost about as much CPU per Invoke as a whole plain Connect request
// does on the server, for a call that is one POST with one body each way.
import * as http2 from "node:http2";
import { Code, ConnectError } from "@connectrpc/connect";
import { codeFromHttpStatus, errorFromJsonBytes, parseContentType } from "@connectrpc/connect/protocol-connect";

/** Unary Connect calls to one endpoint over one reused HTTP/2 session. */
export interface H2UnaryClient {
  /**
   * POSTs `body` to `path` (below the base URL) and resolves the answer's
   * bytes; rejects with a ConnectError coded as Connect's client codes it.
   */
  call(path: string, body: Uint8Array, timeoutMs: number): Promise<Uint8Array>;
  /** Closes the session; a later call opens a new one. */
  close(): void;
}

/** Options of {@link createH2UnaryClient}. */
export interface H2UnaryClientOptions {
  /** `http://` (h2c) or `https://`, optionally with a path prefix. */
  readonly url: string;
  /** PEM contents: a CA to trust instead of the system's, a client certificate and key for mTLS. */
  readonly tls?: { readonly ca?: string | Buffer; readonly cert?: string | Buffer; readonly key?: string | Buffer };
  /** Sent with every request, e.g. `authorization`. */
  readonly headers?: Readonly<Record<string, string>>;
  /** A session without streams for this long is closed. */
  readonly idleTimeoutMs: number;
}

/** Creates an {@link H2UnaryClient}: one session per endpoint, opened on the first call and again after it closes. */
export function createH2UnaryClient(options: H2UnaryClientOptions): H2UnaryClient {
  const base = new URL(options.url);
  const prefix = base.pathname.replace(/\/+$/, "");
  const fixed = {
    ":method": "POST",
    "content-type": "application/proto",
    "connect-protocol-version": "1",
    ...options.headers,
  };
  let session: http2.ClientHttp2Session | undefined;
  /** Why the current session failed (a refused connection, a TLS error): the cause its streams report. */
  let failure: Error | undefined;
  let streams = 0;

  function current(): http2.ClientHttp2Session {
    if (session !== undefined && !session.closed && !session.destroyed) return session;
    failure = undefined;
    const s = http2.connect(base.origin, options.tls === undefined ? {} : { ...options.tls });
    s.on("error", (err) => {
      if (session === s) failure = err;
    });
    const forget = () => {
      if (session === s) session = undefined;
    };
    s.once("goaway", forget);
    s.once("close", forget);
    s.setTimeout(options.idleTimeoutMs, () => {
      if (streams === 0 || session !== s) s.close();
    });
    s.unref();
    session = s;
    return s;
  }

  return {
    call(path, body, timeoutMs) {
      return new Promise<Uint8Array>((resolve, reject) => {
        const s = current();
        let stream: http2.ClientHttp2Stream;
        try {
          stream = s.request({ ...fixed, ":path": prefix + path, "connect-timeout-ms": String(timeoutMs) });
        } catch (err) {
          reject(fromNodeError(failure ?? err));
          return;
        }
        if (streams++ === 0) s.ref();
        let settled = false;
        const settle = (error: ConnectError | undefined, bytes?: Uint8Array) => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          if (error !== undefined) reject(error);
          else resolve(bytes as Uint8Array);
        };
        const timer = setTimeout(() => {
          settle(new ConnectError("the operation timed out", Code.DeadlineExceeded));
          stream.close(http2.constants.NGHTTP2_CANCEL);
        }, timeoutMs);
        let head: http2.IncomingHttpHeaders | undefined;
        const chunks: Buffer[] = [];
        stream.on("response", (headers) => {
          head = headers;
        });
        stream.on("data", (chunk: Buffer) => chunks.push(chunk));
        stream.on("end", () => {
          if (head === undefined) return;
          const bytes = chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks);
          const answer = answerOf(head, bytes);
          if (answer instanceof ConnectError) settle(answer);
          else settle(undefined, answer);
        });
        stream.on("error", (err) => settle(fromNodeError(failure ?? err)));
        stream.on("close", () => {
          if (--streams === 0 && session === s) s.unref();
          if (!settled)
            settle(resetError(stream.rstCode) ?? fromNodeError(failure ?? new Error("the HTTP/2 stream closed without an answer")));
        });
        stream.end(body);
      });
    },
    close() {
      session?.destroy();
      session = undefined;
    },
  };
}

/** The body of a Connect unary answer, or the error it carries, as Connect's client reads it. */
function answerOf(head: http2.IncomingHttpHeaders, bytes: Uint8Array): Uint8Array | ConnectError {
  const status = Number(head[":status"]);
  const contentType = head["content-type"] ?? null;
  const parsed = parseContentType(contentType);
  if (status !== 200) {
    const fromStatus = new ConnectError(`HTTP ${status}`, codeFromHttpStatus(status));
    // A Connect error is JSON; any other body (a proxy's page) leaves the status to speak.
    if (parsed !== undefined && !parsed.binary) return errorFromJsonBytes(bytes, undefined, fromStatus);
    return fromStatus;
  }
  if (parsed === undefined || !parsed.binary || parsed.stream) {
    return new ConnectError(`unsupported content type ${contentType}`, parsed === undefined ? Code.Unknown : Code.Internal);
  }
  return bytes;
}

/** A node error as Connect's node client codes it; the node error stays the cause (TLS faults are told by its code). */
function fromNodeError(reason: unknown): ConnectError {
  const codes: string[] = [];
  // A stream of a session that failed to connect reports ERR_HTTP2_STREAM_CANCEL caused by the session's error: the cause is what happened.
  let root: unknown = reason;
  for (const seen = new Set<unknown>(); ; ) {
    seen.add(root);
    const code = (root as { code?: unknown }).code;
    if (typeof code === "string") codes.push(code);
    const cause = root instanceof Error ? root.cause : undefined;
    if (!(cause instanceof Error) || seen.has(cause)) break;
    root = cause;
  }
  let code = Code.Internal;
  if (
    codes.some(
      (c) => c === "ERR_STREAM_WRITE_AFTER_END" || c === "ERR_STREAM_DESTROYED" || c === "ERR_HTTP2_INVALID_STREAM" || c === "ECONNRESET",
    )
  ) {
    code = Code.Aborted;
  } else if (codes.some((c) => c === "ETIMEDOUT" || c === "ENOTFOUND" || c === "EAI_AGAIN" || c === "ECONNREFUSED")) {
    code = Code.Unavailable;
  }
  const error = ConnectError.from(root, code);
  if (error !== root) error.cause = root;
  return error;
}

/** The error an HTTP/2 RST_STREAM code stands for, as Connect's node client maps it. */
function resetError(rstCode: number): ConnectError | undefined {
  const c = http2.constants;
  const code =
    rstCode === c.NGHTTP2_REFUSED_STREAM
      ? Code.Unavailable
      : rstCode === c.NGHTTP2_CANCEL
        ? Code.Canceled
        : rstCode === c.NGHTTP2_ENHANCE_YOUR_CALM
          ? Code.ResourceExhausted
          : rstCode === c.NGHTTP2_INADEQUATE_SECURITY
            ? Code.PermissionDenied
            : rstCode === c.NGHTTP2_HTTP_1_1_REQUIRED
              ? Code.Internal
              : rstCode === c.NGHTTP2_NO_ERROR || rstCode === undefined
                ? undefined
                : Code.Internal;
  return code === undefined ? undefined : new ConnectError(`http/2 stream closed with error code ${rstCode}`, code);
}
