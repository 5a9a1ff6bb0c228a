// Shoal's own handler for the plainest Connect request: unary, POST over
// HTTP/1.1, a body of `application/proto` or `application/json`, not compressed. That is what
// the Connect clients send to a function route unless told otherwise, and it
// is most of the ingress's traffic.
//
// Written here rather than left to connect-es for performance: connect-es's
// unary handler makes three AbortControllers for every request (its deadline,
// the request's, and one linked to both), aborts the last after the answer
// with no reason (so Node builds a DOMException with its stack trace), copies
// the headers into three `Headers` objects, parses the URL, and passes the
// body through async iterables. Profiled at 64 requests in flight, that was a
// fifth of the server's CPU per request to a function. The ingress's routes
// use none of it: they ignore the signal (a request, once accepted, runs to
// its commit), read three headers and set one.
//
// Anything else (HTTP/2, gRPC, gRPC-web, Connect GET, compressed bodies, a malformed
// `Connect-Timeout-Ms`, `Shoal-Reject-Unknown-Fields`, the admin service) goes
// to connect-es, unchanged. What this handler answers is what connect-es
// answers for the same request, with the ingress's rewrites of its parse and
// size errors applied (`connect-unary.test.ts` compares the two, byte for
// byte, over real sockets). The protocol's parts (content types, status
// mapping, the error body, compression negotiation) are connect-es's exports.
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import {
  type DescMessage,
  type DescMethodUnary,
  fromBinary,
  fromJsonString,
  type JsonReadOptions,
  type JsonWriteOptions,
  type Message,
  toBinary,
  toJsonString,
} from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { type Compression, compressionNegotiate, getJsonOptions } from "@connectrpc/connect/protocol";
import { codeToHttpStatus, errorToJsonBytes } from "@connectrpc/connect/protocol-connect";
import { headers as shoalHeaders } from "@shoal/sdk";
import { malformedBody, requestTooLarge } from "./request-errors.js";

/** A unary route the handler serves: its method, and what answers a decoded request. */
export interface UnaryRoute {
  /** The route's method; its path is `/<service type name>/<method name>`. */
  readonly method: DescMethodUnary;
  /**
   * Answers a decoded request. Reads request headers by lower-case name; may
   * set response headers. Throws a `ConnectError` for an error answer (anything
   * else is answered `Internal`).
   */
  call(request: Message, requestHeader: HeaderReader, responseHeader: HeaderWriter): Promise<Message>;
}

/** The request headers a route reads: the value of a header by lower-case name, or null. */
export interface HeaderReader {
  get(name: string): string | null;
}

/** The response headers a route may set. */
export interface HeaderWriter {
  set(name: string, value: string): void;
}

/** Options of {@link createUnaryConnectHandler}, as the Connect router of the same server has them. */
export interface UnaryConnectOptions {
  readonly readMaxBytes: number;
  readonly jsonOptions?: Partial<JsonReadOptions & JsonWriteOptions>;
  readonly acceptCompression: readonly Compression[];
  /** Responses at least this long are compressed when the client accepts it. connect-es's default: 1 KiB. */
  readonly compressMinBytes?: number;
}

type NodeRequest = IncomingMessage | Http2ServerRequest;

/**
 * Serves `routes` for plain Connect unary requests. Returns a function that
 * takes a request and answers it, or returns false (having touched nothing)
 * when it is not such a request or not for one of the routes, for connect-es
 * to serve.
 */
export function createUnaryConnectHandler(
  routes: readonly UnaryRoute[],
  options: UnaryConnectOptions,
): (req: NodeRequest, res: ServerResponse | Http2ServerResponse) => boolean {
  const byPath = new Map(routes.map((route) => [`/${route.method.parent.typeName}/${route.method.name}`, route]));
  const jsonOptions = getJsonOptions(options.jsonOptions);
  const compressMinBytes = options.compressMinBytes ?? 1024;
  return (req, res) => {
    // HTTP/2 requests (gRPC, mostly) go to connect-es, which watches their streams.
    if (req.method !== "POST" || "stream" in req) return false;
    const route = byPath.get(req.url ?? "");
    if (route === undefined) return false;
    const head = req.headers;
    const contentType = head["content-type"];
    const binary = contentType === "application/proto" ? true : contentType === "application/json" ? false : undefined;
    if (binary === undefined) return false;
    const encoding = head["content-encoding"];
    if (encoding !== undefined && encoding !== "identity") return false;
    const timeout = head["connect-timeout-ms"];
    if (timeout !== undefined && (typeof timeout !== "string" || !validTimeout.test(timeout))) return false;
    if (head[shoalHeaders.rejectUnknownFields] !== undefined) return false;
    answer(route, binary, req as IncomingMessage, res as ServerResponse).catch((err: unknown) => {
      console.error(`handler for rpc ${route.method.name} of ${route.method.parent.typeName} failed`, err);
    });
    return true;
  };

  async function answer(route: UnaryRoute, binary: boolean, req: IncomingMessage, res: ServerResponse): Promise<void> {
    // Content-Type first, as a reader of `curl -i` expects it.
    const responseHeader: OutgoingHttpHeaders = { "content-type": binary ? "application/proto" : "application/json" };
    let status = 200;
    let body: Uint8Array;
    try {
      const bytes = await readBody(req, options.readMaxBytes);
      if (bytes === undefined) return; // the client went away
      const input = parse(route.method.input, binary, bytes);
      const output = await route.call(input, requestHeaders(req), {
        set(name, value) {
          responseHeader[name.toLowerCase()] = value;
        },
      });
      body = binary ? toBinary(route.method.output, output) : textEncoder.encode(toJsonString(route.method.output, output, jsonOptions));
    } catch (err) {
      const error = err instanceof ConnectError ? err : new ConnectError("internal error", Code.Internal, undefined, undefined, err);
      status = codeToHttpStatus(error.code);
      responseHeader["content-type"] = "application/json";
      error.metadata.forEach((value, name) => {
        if (!protocolHeaders.has(name)) responseHeader[name] = value;
      });
      body = errorToJsonBytes(error, jsonOptions);
    }
    if (body.byteLength >= compressMinBytes) {
      const accepted = req.headers["accept-encoding"];
      const compression =
        accepted === undefined
          ? undefined
          : compressionNegotiate([...options.acceptCompression], null, accepted, "accept-encoding").response;
      if (compression) {
        body = await compression.compress(body);
        responseHeader["content-encoding"] = compression.name;
      }
    }
    responseHeader["content-length"] = String(body.byteLength);
    if (res.destroyed) return;
    // One write for the head and the body.
    res.writeHead(status, responseHeader);
    res.end(body);
  }

  function parse(desc: DescMessage, binary: boolean, bytes: Uint8Array): Message {
    if (binary) {
      try {
        return fromBinary(desc, bytes);
      } catch (err) {
        throw new ConnectError(malformedBody(`parse binary: ${err instanceof Error ? err.message : String(err)}`), Code.InvalidArgument);
      }
    }
    try {
      return fromJsonString(desc, textDecoder.decode(bytes), jsonOptions);
    } catch (err) {
      throw ConnectError.from(err, Code.InvalidArgument);
    }
  }
}

// Connect's own rule for the header; anything else goes to connect-es, which names the problem.
const validTimeout = /^\d{1,10}$/;

// Headers of the Connect protocol that an error's metadata does not override (connect-es's list).
const protocolHeaders = new Set([
  "content-type",
  "content-length",
  "content-encoding",
  "accept-encoding",
  "connect-protocol-version",
  "connect-timeout-ms",
  "grpc-status",
  "grpc-message",
  "grpc-status-details-bin",
  "grpc-timeout",
  "grpc-encoding",
  "grpc-accept-encoding",
  "grpc-message-type",
  "connect-content-encoding",
  "connect-accept-encoding",
  "te",
  "trailer",
]);

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder();

function requestHeaders(req: IncomingMessage): HeaderReader {
  return {
    get(name) {
      const value = req.headers[name];
      return value === undefined ? null : Array.isArray(value) ? value.join(", ") : value;
    },
  };
}

/**
 * The request's body, or undefined when the client went away before sending
 * it all. Refuses more than `maxBytes` with ResourceExhausted, from the
 * Content-Length when there is one, as connect-es does.
 */
function readBody(req: IncomingMessage, maxBytes: number): Promise<Uint8Array | undefined> {
  const declared = req.headers["content-length"];
  if (declared !== undefined) {
    const length = Number(declared);
    if (length > maxBytes) return Promise.reject(new ConnectError(requestTooLarge(length, maxBytes), Code.ResourceExhausted));
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const done = () => {
      req.off("data", onData);
      req.off("end", onEnd);
      req.off("error", onGone);
      req.off("close", onGone);
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > maxBytes) {
        done();
        reject(new ConnectError(requestTooLarge(undefined, maxBytes), Code.ResourceExhausted));
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = () => {
      done();
      // A copy of its own, as connect-es makes: a decoded bytes field is a view
      // of these bytes, and a view of the socket's read buffer would keep all
      // of that buffer alive for as long as an instance's state holds it.
      const body = new Uint8Array(size);
      let offset = 0;
      for (const chunk of chunks) {
        body.set(chunk, offset);
        offset += chunk.length;
      }
      resolve(body);
    };
    const onGone = () => {
      done();
      resolve(undefined);
    };
    req.on("data", onData);
    req.on("end", onEnd);
    req.on("error", onGone);
    req.on("close", onGone);
  });
}
