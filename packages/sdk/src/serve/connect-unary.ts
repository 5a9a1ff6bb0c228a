// A Connect unary request answered straight from node's request and response,
// in front of connect-node: what a remote function endpoint does for the
// runtime's Invoke (serve/invoke-fast-path.ts) and the runtime's ingress for
// a request to a function (@shoal/runtime's http/connect-adapter.ts).
//
// Written here rather than left to connect-node for performance: per call,
// connect-node builds three AbortControllers (a deadline, the request's and
// one linked to both), aborts the last after the answer without a reason (a
// DOMException with its stack each time), copies the headers into three web
// `Headers`, parses the URL and passes a one-chunk body through async
// iterables. In the bench's profiles that was about half of an endpoint's CPU
// per Invoke, and half of the ingress's per request to a function. Neither
// uses what it buys: a request, once taken, runs to its end whatever its
// client does.
//
// It takes only the plainest requests: POST, `application/proto` (and
// `application/json` where asked), no `Content-Encoding`, a well-formed
// `Connect-Timeout-Ms` or none, and whatever `accepts` adds. Everything else
// goes to connect-node, whose answers stay its own. What it does answer, it
// answers as connect-node does, with connect-es's exported parts: the same
// parse and size checks, serialization, error JSON, status and compression.
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import type { DescMethodUnary, JsonReadOptions, JsonWriteOptions, MessageShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  type Compression,
  compressionNegotiate,
  createMethodSerializationLookup,
  getJsonOptions,
  mergeNonProtocolHeaders,
} from "@connectrpc/connect/protocol";
import { codeToHttpStatus, errorToJsonBytes } from "@connectrpc/connect/protocol-connect";

/** A node request, HTTP/1.1 or HTTP/2. */
export type NodeRequest = IncomingMessage | Http2ServerRequest;
/** A node response, HTTP/1.1 or HTTP/2. */
export type NodeResponse = ServerResponse | Http2ServerResponse;

/** The request headers a route reads: a header's value by lower-case name, or null. */
export interface HeaderReader {
  get(name: string): string | null;
}

/** The response headers a route may set. */
export interface HeaderWriter {
  set(name: string, value: string): void;
}

/** A unary method and what answers its decoded requests. */
export interface ConnectUnaryRoute {
  // biome-ignore lint/suspicious/noExplicitAny: routes of different methods share one list
  readonly method: DescMethodUnary<any, any>;
  /**
   * Answers a decoded request. A `ConnectError` becomes the error answer;
   * anything else is answered as connect-node does: `Internal`, "internal error".
   */
  // biome-ignore lint/suspicious/noExplicitAny: as above
  call(request: MessageShape<any>, requestHeader: HeaderReader, responseHeader: HeaderWriter): Promise<MessageShape<any>>;
}

/** Options of {@link createConnectUnaryHandler}, as the Connect router behind it has them. */
export interface ConnectUnaryOptions {
  /** The request size limit (connect-node's `readMaxBytes`). */
  readonly readMaxBytes: number;
  /** Connect JSON too (`application/json`), with these options; without, JSON goes to connect-node. */
  readonly jsonOptions?: Partial<JsonReadOptions & JsonWriteOptions>;
  /**
   * The response compressions to offer, negotiated from `Accept-Encoding` as
   * connect-node does (for answers of `compressMinBytes` and more); without,
   * a request with `Accept-Encoding` goes to connect-node.
   */
  readonly acceptCompression?: readonly Compression[];
  /** connect-es's default: 1 KiB. */
  readonly compressMinBytes?: number;
  /** Whether HTTP/2 requests are answered here too. Default true. */
  readonly http2?: boolean;
  /** A further condition for a request to be answered here (a token, a header), checked last. */
  accepts?(req: NodeRequest): boolean;
  /** Every error answer passes through this first (the ingress words connect-es's parse and size errors its own way). */
  rewriteError?(error: ConnectError): ConnectError;
}

/**
 * Answers the plainest Connect unary requests to `routes`. Returns a function
 * that answers a request and returns true, or returns false having touched
 * nothing, for connect-node to serve the request.
 */
export function createConnectUnaryHandler(
  routes: readonly ConnectUnaryRoute[],
  options: ConnectUnaryOptions,
): (req: NodeRequest, res: NodeResponse) => boolean {
  const json = options.jsonOptions === undefined ? undefined : getJsonOptions(options.jsonOptions);
  const limits = { readMaxBytes: options.readMaxBytes, writeMaxBytes: maxWriteBytes };
  const byPath = new Map(
    routes.map((route) => [
      `/${route.method.parent.typeName}/${route.method.name}`,
      { route, serialization: createMethodSerializationLookup(route.method, undefined, json, limits) },
    ]),
  );
  const compressMinBytes = options.compressMinBytes ?? 1024;
  const rewrite = options.rewriteError ?? ((error: ConnectError) => error);

  return (req, res) => {
    const found = req.method === "POST" && req.url !== undefined ? byPath.get(req.url) : undefined;
    if (found === undefined) return false;
    if (options.http2 === false && "stream" in req) return false;
    const h = req.headers;
    const contentType = h["content-type"];
    const binary =
      contentType === "application/proto" ? true : contentType === "application/json" && json !== undefined ? false : undefined;
    if (binary === undefined) return false;
    const encoding = h["content-encoding"];
    if (encoding !== undefined && encoding !== "identity") return false;
    if (options.acceptCompression === undefined && h["accept-encoding"] !== undefined) return false;
    const timeout = h["connect-timeout-ms"];
    if (timeout !== undefined && !(typeof timeout === "string" && timeoutPattern.test(timeout))) return false;
    if (options.accepts !== undefined && !options.accepts(req)) return false;
    void answer(found.route, found.serialization, binary, req, res);
    return true;
  };

  async function answer(
    route: ConnectUnaryRoute,
    serialization: ReturnType<typeof createMethodSerializationLookup>,
    binary: boolean,
    req: NodeRequest,
    res: NodeResponse,
  ): Promise<void> {
    // Content-Type first, as a reader of `curl -i` expects it.
    const header: OutgoingHttpHeaders = { "content-type": binary ? "application/proto" : "application/json" };
    let status = 200;
    let body: Uint8Array;
    try {
      const bytes = await readBody(req, options.readMaxBytes);
      if (bytes === undefined) return; // the client went away: no one to answer
      const input = serialization.getI(binary).parse(bytes);
      let output: MessageShape<typeof route.method.output>;
      try {
        output = await route.call(input, requestHeaders(req), {
          set(name, value) {
            header[name.toLowerCase()] = value;
          },
        });
      } catch (err) {
        throw err instanceof ConnectError ? err : new ConnectError("internal error", Code.Internal, undefined, undefined, err);
      }
      body = serialization.getO(binary).serialize(output);
    } catch (err) {
      const error = rewrite(ConnectError.from(err, Code.Internal));
      status = codeToHttpStatus(error.code);
      header["content-type"] = "application/json";
      if (!error.isWireError) {
        const metadata = new Headers();
        mergeNonProtocolHeaders(metadata, error.metadata);
        metadata.forEach((value, name) => {
          header[name] = value;
        });
      }
      body = errorToJsonBytes(error, json);
    }
    if (body.byteLength >= compressMinBytes && options.acceptCompression !== undefined) {
      const accepted = req.headers["accept-encoding"];
      const compression =
        accepted === undefined ? null : compressionNegotiate([...options.acceptCompression], null, accepted, "accept-encoding").response;
      if (compression !== null) {
        body = await compression.compress(body);
        header["content-encoding"] = compression.name;
      }
    }
    header["content-length"] = String(body.byteLength);
    // The stream may be gone (the client reset it, the session closed): then there is no one to answer.
    if (res.writableEnded || ("stream" in res ? res.stream.destroyed : res.destroyed)) return;
    try {
      // node:http's and node:http2's responses take these two calls alike; one write for the head and the body.
      const r = res as ServerResponse;
      r.writeHead(status, header);
      r.end(body);
    } catch {
      // A write racing the stream's close; the client saw the reset.
    }
  }
}

/** Connect-Timeout-Ms as connect-es accepts it; anything else is connect-node's to refuse. */
const timeoutPattern = /^\d{1,10}$/;
/** connect-es's default writeMaxBytes. */
const maxWriteBytes = 0xffffffff;

function requestHeaders(req: NodeRequest): HeaderReader {
  return {
    get(name) {
      const value = req.headers[name];
      return value === undefined ? null : Array.isArray(value) ? value.join(", ") : value;
    },
  };
}

/**
 * The request's body, or undefined when the client went away before sending
 * it all. Refuses more than `readMaxBytes`, and a body that breaks the
 * promise of its Content-Length, with connect-es's errors.
 */
function readBody(req: NodeRequest, readMaxBytes: number): Promise<Uint8Array | undefined> {
  const hint = lengthHint(req.headers["content-length"]);
  if (hint !== undefined && hint > readMaxBytes) {
    req.resume();
    return Promise.reject(
      new ConnectError(`message size ${hint} is larger than configured readMaxBytes ${readMaxBytes}`, Code.ResourceExhausted),
    );
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const stop = () => {
      req.off("data", onData);
      req.off("end", onEnd);
      req.off("error", onGone);
      req.off("close", onGone);
    };
    const fail = (error: ConnectError) => {
      stop();
      // The rest of the body is read and dropped, so the connection can serve its next request.
      req.resume();
      reject(error);
    };
    const onData = (chunk: Buffer) => {
      size += chunk.byteLength;
      if (hint !== undefined && size > hint)
        fail(new ConnectError(`protocol error: promised ${hint} bytes, received ${size}`, Code.InvalidArgument));
      else if (size > readMaxBytes)
        fail(new ConnectError(`message size is larger than configured readMaxBytes ${readMaxBytes}`, Code.ResourceExhausted));
      else chunks.push(chunk);
    };
    const onEnd = () => {
      stop();
      if (hint !== undefined && size < hint) {
        reject(new ConnectError(`protocol error: promised ${hint} bytes, received ${size}`, Code.InvalidArgument));
        return;
      }
      // A copy of its own, as connect-es makes: a decoded bytes field is a view
      // of these bytes, and a view of node's read buffer would keep all of
      // that buffer alive for as long as the field is kept (in a state, say).
      const bytes = new Uint8Array(size);
      let offset = 0;
      for (const chunk of chunks) {
        bytes.set(chunk, offset);
        offset += chunk.byteLength;
      }
      resolve(bytes);
    };
    const onGone = () => {
      stop();
      resolve(undefined);
    };
    req.on("data", onData);
    req.on("end", onEnd);
    req.on("error", onGone);
    req.on("close", onGone);
  });
}

function lengthHint(header: string | undefined): number | undefined {
  if (header === undefined) return undefined;
  const n = Number.parseInt(header, 10);
  return Number.isSafeInteger(n) && n >= 0 ? n : undefined;
}
