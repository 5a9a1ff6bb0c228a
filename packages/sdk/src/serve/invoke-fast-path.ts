// The runtime's Invoke and InvokeMany answered straight from node's request
// and response, in front of connect-node. Per call connect-node builds an AbortController
// linked to a deadline signal (a DOMException each), web Headers, a URL and
// an async-iterable body: about half of an endpoint's CPU per Invoke in the
// bench's profile. The fast path takes only the request the runtime sends
// (POST, binary proto, no compression, a well-formed Connect-Timeout-Ms, the
// right token); anything else (JSON, GET, compression, a missing or wrong
// token, a bad timeout, another path) goes to connect-node, so those answers
// stay connect-node's own. What the fast path does answer, it answers as
// connect-node does: the same parse, size checks, error JSON and status.
import type { ServerResponse } from "node:http";
import type { DescMessage, DescMethod, DescMethodUnary, MessageShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { createMethodSerializationLookup, mergeNonProtocolHeaders } from "@connectrpc/connect/protocol";
import { codeToHttpStatus, errorToJsonBytes } from "@connectrpc/connect/protocol-connect";
import type { connectNodeAdapter } from "@connectrpc/connect-node";
import {
  FunctionService,
  type InvokeManyRequest,
  type InvokeManyResponse,
  type InvokeRequest,
  type InvokeResponse,
} from "../gen/shoal/v1/function_pb.js";

/** A node request listener for node:http and node:http2, as `connectNodeAdapter` returns. */
type NodeHandler = ReturnType<typeof connectNodeAdapter>;
type NodeResponse = Parameters<NodeHandler>[1];

/** What the fast path needs of the endpoint (`functionRoutes`). */
export interface InvokeEndpoint {
  /** Runs one Invoke; throws what the route's implementation throws. */
  invoke(message: InvokeRequest): Promise<InvokeResponse>;
  /** Runs one InvokeMany; throws what the route's implementation throws. */
  invokeMany(message: InvokeManyRequest): Promise<InvokeManyResponse>;
  /** Logs an error of `invoke` as the routes' interceptor does, and returns it as a ConnectError. */
  refused(err: unknown): ConnectError;
  /** Whether the `Authorization` header carries the endpoint's token. */
  authorized(given: string | undefined): boolean;
  /** The request size limit (connect-node's `readMaxBytes`). */
  readonly readMaxBytes: number;
}

/** Connect-Timeout-Ms as connect-es accepts it; anything else is connect-node's to refuse. */
const timeoutPattern = /^\d{1,10}$/;
/** connect-es's default writeMaxBytes (the router sets none). */
const maxWriteBytes = 0xffffffff;

/** `fallback` (connect-node) with the runtime's `Invoke` and `InvokeMany` requests answered before it. */
export function withInvokeFastPath(endpoint: InvokeEndpoint, fallback: NodeHandler): NodeHandler {
  const readMaxBytes = endpoint.readMaxBytes;
  const limits = { readMaxBytes, writeMaxBytes: maxWriteBytes };
  const routes = new Map<string, (bytes: Uint8Array, res: NodeResponse) => Promise<void>>([
    [pathOf(FunctionService.method.invoke), route(FunctionService.method.invoke, (m) => endpoint.invoke(m))],
    [pathOf(FunctionService.method.invokeMany), route(FunctionService.method.invokeMany, (m) => endpoint.invokeMany(m))],
  ]);

  /** One method's answer to the body it was sent, as connect-node gives it. */
  function route<I extends DescMessage, O extends DescMessage>(
    method: DescMethodUnary<I, O>,
    implementation: (message: MessageShape<I>) => Promise<MessageShape<O>>,
  ) {
    const serialization = createMethodSerializationLookup(method, undefined, undefined, limits);
    const input = serialization.getI(true);
    const output = serialization.getO(true);
    return async (bytes: Uint8Array, res: NodeResponse) => {
      let message: MessageShape<I>;
      try {
        message = input.parse(bytes);
      } catch (err) {
        // connect-node parses before its interceptors run: a parse error is not logged as refused.
        return answerError(res, ConnectError.from(err, Code.Internal));
      }
      let response: MessageShape<O>;
      try {
        response = await implementation(message);
      } catch (err) {
        return answerError(res, endpoint.refused(err));
      }
      let body: Uint8Array;
      try {
        body = output.serialize(response);
      } catch (err) {
        return answerError(res, ConnectError.from(err, Code.Internal));
      }
      answer(res, 200, "application/proto", body);
    };
  }

  return (req, res) => {
    const h = req.headers;
    const timeout = req.headers["connect-timeout-ms"];
    const run = req.url === undefined ? undefined : routes.get(req.url);
    if (
      run === undefined ||
      req.method !== "POST" ||
      h["content-type"] !== "application/proto" ||
      h["content-encoding"] !== undefined ||
      h["accept-encoding"] !== undefined ||
      (timeout !== undefined && !(typeof timeout === "string" && timeoutPattern.test(timeout))) ||
      ("authority" in req ? req.authority : h.host) === undefined ||
      !endpoint.authorized(h.authorization)
    ) {
      fallback(req, res);
      return;
    }
    // connect-es reads the body up to Content-Length when it is given, else up to readMaxBytes, with these errors.
    const hint = lengthHint(h["content-length"]);
    if (hint !== undefined && hint > readMaxBytes) {
      req.resume();
      answerError(
        res,
        new ConnectError(`message size ${hint} is larger than configured readMaxBytes ${readMaxBytes}`, Code.ResourceExhausted),
      );
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    const fail = (error: ConnectError) => {
      done = true;
      chunks.length = 0;
      req.resume();
      answerError(res, error);
    };
    req.on("data", (chunk: Buffer) => {
      if (done) return;
      size += chunk.byteLength;
      if (hint !== undefined && size > hint) {
        fail(new ConnectError(`protocol error: promised ${hint} bytes, received ${size}`, Code.InvalidArgument));
      } else if (size > readMaxBytes) {
        fail(new ConnectError(`message size is larger than configured readMaxBytes ${readMaxBytes}`, Code.ResourceExhausted));
      } else {
        chunks.push(chunk);
      }
    });
    req.on("end", () => {
      if (done) return;
      done = true;
      if (hint !== undefined && size < hint) {
        answerError(res, new ConnectError(`protocol error: promised ${hint} bytes, received ${size}`, Code.InvalidArgument));
        return;
      }
      // A copy, as connect-es makes: parsed bytes fields must not be views of node's pooled buffers.
      const bytes = new Uint8Array(size);
      let offset = 0;
      for (const chunk of chunks) {
        bytes.set(chunk, offset);
        offset += chunk.byteLength;
      }
      void run(bytes, res);
    });
    // A client that goes away leaves nothing to answer; connect-node's write would fail the same way.
    req.on("error", () => {
      done = true;
    });
  };
}

function pathOf(method: DescMethod): string {
  return `/${method.parent.typeName}/${method.name}`;
}

function lengthHint(header: string | undefined): number | undefined {
  if (header === undefined) return undefined;
  const n = Number.parseInt(header, 10);
  return Number.isSafeInteger(n) && n >= 0 ? n : undefined;
}

function answerError(res: NodeResponse, error: ConnectError) {
  const headers = new Headers();
  if (!error.isWireError) mergeNonProtocolHeaders(headers, error.metadata);
  const extra: Record<string, string> = {};
  headers.forEach((value, key) => {
    extra[key] = value;
  });
  answer(res, codeToHttpStatus(error.code), "application/json", errorToJsonBytes(error, undefined), extra);
}

function answer(res: NodeResponse, status: number, contentType: string, body: Uint8Array, extra?: Record<string, string>) {
  // The stream may be gone (the client reset it, the session closed): then there is no one to answer.
  if (res.writableEnded || ("stream" in res ? res.stream.destroyed : res.destroyed)) return;
  try {
    // Both node:http's and node:http2's responses take these two calls alike.
    const r = res as ServerResponse;
    r.writeHead(status, { ...extra, "content-type": contentType, "content-length": String(body.byteLength) });
    r.end(body);
  } catch {
    // A write racing the stream's close; the client saw the reset.
  }
}
