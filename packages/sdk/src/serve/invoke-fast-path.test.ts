// serveFunctions' node fast path over real sockets (h2c and HTTP/1.1): the
// runtime's Invoke is answered without connect-node, and every answer it
// gives (success and each refusal) is the one connect-node gives for the same
// request. connect-node's answer is had from the same server by adding
// `Accept-Encoding: identity`, which changes nothing in connect-node's answer
// but sends the request past the fast path.
import * as http from "node:http";
import * as http2 from "node:http2";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { cart } from "../../../../examples/shopping-cart/src/cart.js";
import { CartViewSchema, ViewRequestSchema } from "../../../../examples/shopping-cart/src/gen/shop/v1/cart_pb.js";
import { CartFunction } from "../../../../examples/shopping-cart/src/gen/shop/v1/cart_shoal.js";
import {
  InvokeManyRequestSchema,
  InvokeManyResponseSchema,
  InvokeRequestSchema,
  InvokeResponseSchema,
} from "../gen/shoal/v1/function_pb.js";
import { EnvelopeSchema } from "../gen/shoal/v1/protocol_pb.js";
import { implement, module } from "../module.js";
import { functionProtocolVersion, invokeRequestToProto } from "../remote/function-protocol.js";
import { type FunctionServer, listenFunctions } from "./listen-functions.js";
import { serveFunctions } from "./serve-functions.js";

// Every request connect-node's handler sees, by path: what the fast path must leave to it.
const seen = vi.hoisted(() => ({ byConnectNode: [] as string[] }));
vi.mock("@connectrpc/connect-node", async (importOriginal) => {
  const actual = await importOriginal<typeof import("@connectrpc/connect-node")>();
  return {
    ...actual,
    connectNodeAdapter(options: Parameters<typeof actual.connectNodeAdapter>[0]) {
      const handler = actual.connectNodeAdapter(options);
      return ((req, res) => {
        seen.byConnectNode.push(`${req.method} ${req.url}`);
        handler(req, res);
      }) satisfies typeof handler;
    },
  };
});

const token = "s3cret";
const invokePath = "/shoal.v1.FunctionService/Invoke";
/** Releases the View of the key "slow", which waits for it (the shutdown test's request in flight). */
let releaseSlow: () => void = () => {};
const slowStarted = { resolve: () => {} };
const functions = module(
  implement(CartFunction, {
    ...cart,
    async view(req, ctx) {
      if (ctx.key === "slow") {
        slowStarted.resolve();
        await new Promise<void>((resolve) => {
          releaseSlow = resolve;
        });
      }
      return cart.view(req, ctx);
    },
  }),
);
const warnings: string[] = [];
const logger = {
  debug() {},
  info() {},
  warn: (m: string, f?: Record<string, unknown>) => warnings.push(`${m} ${JSON.stringify(f)}`),
  error() {},
};

const view = (key: string, id = "v1") =>
  invokeRequestToProto({
    address: { type: CartFunction.typeName, key },
    state: undefined,
    messages: [
      {
        envelope: create(EnvelopeSchema, {
          id,
          target: { type: CartFunction.typeName, key },
          handler: "View",
          payload: toBinary(ViewRequestSchema, create(ViewRequestSchema, { userId: key })),
        }),
        journal: [],
      },
    ],
  });
const bytesOf = (request: ReturnType<typeof view>) => toBinary(InvokeRequestSchema, request);
const manyPath = "/shoal.v1.FunctionService/InvokeMany";
const manyBytesOf = (...requests: Array<ReturnType<typeof view>>) =>
  toBinary(InvokeManyRequestSchema, create(InvokeManyRequestSchema, { requests }));
/** Each result of an InvokeMany answer: the address it answers for, or its error. */
const resultsOf = (body: Uint8Array) =>
  fromBinary(InvokeManyResponseSchema, body).results.map((r) =>
    r.result.case === "response"
      ? `${r.result.value.address?.key}: ${r.result.value.outcomes.map((o) => o.status.case).join(",")}`
      : `error ${r.result.value?.code}: ${r.result.value?.message}`,
  );

/** The headers the runtime's remote invoker sends (runtime/src/invoker/h2-unary-client.ts). */
const runtimeHeaders = {
  "content-type": "application/proto",
  "connect-protocol-version": "1",
  "connect-timeout-ms": "10000",
  authorization: `Bearer ${token}`,
};

interface Answer {
  readonly status: number;
  readonly contentType: string | undefined;
  readonly body: Buffer;
}

/** One request on its own connection, with exactly these headers (no client adds any of its own but Host). */
function send(
  url: string,
  httpVersion: "2" | "1.1",
  options: { method?: string; path?: string; headers: Record<string, string>; body?: Uint8Array },
): Promise<Answer> {
  const { method = "POST", path = invokePath, headers, body } = options;
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    if (httpVersion === "1.1") {
      const req = http.request(`${url}${path}`, { method, headers, agent: false }, (res) => {
        res.on("data", (chunk: Buffer) => chunks.push(chunk));
        res.on("end", () =>
          resolve({ status: res.statusCode ?? 0, contentType: res.headers["content-type"], body: Buffer.concat(chunks) }),
        );
      });
      req.on("error", reject);
      req.end(body);
      return;
    }
    const session = http2.connect(url);
    session.on("error", reject);
    const stream = session.request({ ":method": method, ":path": path, ...headers }, { endStream: body === undefined });
    let head: http2.IncomingHttpHeaders = {};
    stream.on("response", (h) => {
      head = h;
    });
    stream.on("data", (chunk: Buffer) => chunks.push(chunk));
    stream.on("end", () => {
      session.close();
      resolve({ status: Number(head[":status"]), contentType: head["content-type"], body: Buffer.concat(chunks) });
    });
    stream.on("error", reject);
    if (body !== undefined) stream.end(body);
  });
}

const json = (answer: Answer) => JSON.parse(answer.body.toString("utf8")) as unknown;

describe.each(["2", "1.1"] as const)("serveFunctions' fast path for Invoke over HTTP/%s", (httpVersion) => {
  let server: FunctionServer;
  beforeAll(async () => {
    server = await listenFunctions(functions, {
      port: 0,
      host: "127.0.0.1",
      httpVersion,
      bearerToken: token,
      logger,
      maxRequestBytes: 1024,
    });
  });
  afterAll(() => server.close());

  /** The request as sent, and again past the fast path: connect-node's answer. */
  async function both(options: { method?: string; path?: string; headers: Record<string, string>; body?: Uint8Array }) {
    const before = seen.byConnectNode.length;
    const fast = await send(server.url, httpVersion, options);
    const fastReachedConnectNode = seen.byConnectNode.length > before;
    const connect = await send(server.url, httpVersion, { ...options, headers: { ...options.headers, "accept-encoding": "identity" } });
    expect(seen.byConnectNode.length).toBeGreaterThan(before + (fastReachedConnectNode ? 1 : 0));
    return { fast, connect, fastReachedConnectNode };
  }

  it("answers the runtime's Invoke without connect-node, with the bytes connect-node answers", async () => {
    const { fast, connect, fastReachedConnectNode } = await both({ headers: runtimeHeaders, body: bytesOf(view("joe")) });
    expect(fastReachedConnectNode).toBe(false);
    expect(fast.status).toBe(200);
    expect(fast.contentType).toBe("application/proto");
    expect(fast.body).toEqual(connect.body);
    const response = fromBinary(InvokeResponseSchema, fast.body);
    expect(response.protocolVersion).toBe(functionProtocolVersion);
    const outcome = response.outcomes[0]?.status;
    if (outcome?.case !== "done" || outcome.value.reply?.result.case !== "ok") throw new Error(`expected a reply, got ${outcome?.case}`);
    expect(fromBinary(CartViewSchema, outcome.value.reply.result.value).items).toEqual({});
  });

  it("answers a request without Connect-Timeout-Ms and Connect-Protocol-Version too", async () => {
    const { "connect-timeout-ms": _, "connect-protocol-version": __, ...headers } = runtimeHeaders;
    const { fast, connect, fastReachedConnectNode } = await both({ headers, body: bytesOf(view("joe")) });
    expect(fastReachedConnectNode).toBe(false);
    expect([fast.status, fast.body]).toEqual([200, connect.body]);
  });

  it("refuses another protocol version with FailedPrecondition, logged as refused, as connect-node does", async () => {
    const request = view("joe");
    request.protocolVersion = functionProtocolVersion + 1;
    warnings.length = 0;
    const { fast, connect, fastReachedConnectNode } = await both({ headers: runtimeHeaders, body: bytesOf(request) });
    expect(fastReachedConnectNode).toBe(false);
    expect([fast.status, fast.contentType]).toEqual([connect.status, connect.contentType]);
    expect(fast.status).toBe(400);
    expect(fast.contentType).toBe("application/json");
    expect(json(fast)).toEqual(json(connect));
    expect(json(fast)).toEqual({
      code: "failed_precondition",
      message:
        "shoal.v1.FunctionService: the runtime sent protocol version 2, this function endpoint speaks version 1: upgrade @shoal/sdk in the function endpoint so both speak the same version",
    });
    expect(warnings).toHaveLength(2);
    expect(warnings[0]).toBe(warnings[1]);
    expect(warnings[0]).toContain('"code":"FailedPrecondition"');
  });

  it("refuses a request without messages with InvalidArgument, as connect-node does", async () => {
    const empty = create(InvokeRequestSchema, {
      protocolVersion: functionProtocolVersion,
      address: { type: CartFunction.typeName, key: "joe" },
    });
    const { fast, connect, fastReachedConnectNode } = await both({ headers: runtimeHeaders, body: toBinary(InvokeRequestSchema, empty) });
    expect(fastReachedConnectNode).toBe(false);
    expect([fast.status, json(fast)]).toEqual([connect.status, json(connect)]);
    expect(json(fast)).toEqual({
      code: "invalid_argument",
      message: "shoal.v1.FunctionService.Invoke: invalid request: no messages to run",
    });
  });

  it("refuses bytes that are not an InvokeRequest with Connect's parse error, not logged as refused, as connect-node does", async () => {
    warnings.length = 0;
    // A field 1 varint that never ends: no protobuf decoder accepts it.
    const { fast, connect, fastReachedConnectNode } = await both({
      headers: runtimeHeaders,
      body: new Uint8Array([0x08, 0xff, 0xff, 0xff]),
    });
    expect(fastReachedConnectNode).toBe(false);
    expect([fast.status, fast.contentType, json(fast)]).toEqual([connect.status, connect.contentType, json(connect)]);
    expect([fast.status, json(fast)]).toEqual([500, { code: "internal", message: "parse binary: premature EOF" }]);
    expect(warnings).toEqual([]);
  });

  it("refuses a body over maxRequestBytes with ResourceExhausted, as connect-node does, with and without Content-Length", async () => {
    const big = bytesOf(view("x".repeat(2000)));
    // node's HTTP/1.1 client sends Content-Length for a body given at once, unless told to send it chunked.
    const chunked: Record<string, string> = httpVersion === "1.1" ? { "transfer-encoding": "chunked" } : {};
    const unsized = await both({ headers: { ...runtimeHeaders, ...chunked }, body: big });
    expect(unsized.fastReachedConnectNode).toBe(false);
    const sized = await both({ headers: { ...runtimeHeaders, "content-length": String(big.byteLength) }, body: big });
    expect(sized.fastReachedConnectNode).toBe(false);
    for (const { fast, connect } of [unsized, sized]) {
      expect([fast.status, fast.contentType, json(fast)]).toEqual([connect.status, connect.contentType, json(connect)]);
      expect(fast.status).toBe(429);
    }
    // With Content-Length the size is known before reading, and named.
    expect(json(sized.fast)).toEqual({
      code: "resource_exhausted",
      message: `message size ${big.byteLength} is larger than configured readMaxBytes 1024`,
    });
    expect(json(unsized.fast)).toEqual({ code: "resource_exhausted", message: "message size is larger than configured readMaxBytes 1024" });
  });

  it("leaves a missing or wrong bearer token to connect-node: Unauthenticated, as before", async () => {
    for (const authorization of [undefined, "Bearer guess"]) {
      const { authorization: _, ...rest } = runtimeHeaders;
      const headers = authorization === undefined ? rest : { ...rest, authorization };
      const { fast, connect, fastReachedConnectNode } = await both({ headers, body: bytesOf(view("joe")) });
      expect(fastReachedConnectNode).toBe(true);
      expect([fast.status, json(fast)]).toEqual([connect.status, json(connect)]);
      expect(fast.status).toBe(401);
      expect(json(fast)).toMatchObject({
        code: "unauthenticated",
        message: expect.stringContaining(authorization === undefined ? "no Authorization header" : "a wrong bearer token"),
      });
    }
  });

  it("leaves a malformed Connect-Timeout-Ms to connect-node: InvalidArgument", async () => {
    const { fast, fastReachedConnectNode } = await both({
      headers: { ...runtimeHeaders, "connect-timeout-ms": "soon" },
      body: bytesOf(view("joe")),
    });
    expect(fastReachedConnectNode).toBe(true);
    expect([fast.status, json(fast)]).toEqual([
      400,
      { code: "invalid_argument", message: "protocol error: invalid connect timeout value: soon" },
    ]);
  });

  it("answers the runtime's InvokeMany without connect-node, as connect-node does: one result per request, in order, a refused one as its error alone", async () => {
    const newer = view("bob");
    newer.protocolVersion = functionProtocolVersion + 1;
    warnings.length = 0;
    const body = manyBytesOf(view("joe"), newer, view("ann"));
    const { fast, connect, fastReachedConnectNode } = await both({ path: manyPath, headers: runtimeHeaders, body });
    expect(fastReachedConnectNode).toBe(false);
    expect([fast.status, fast.contentType]).toEqual([200, "application/proto"]);
    expect(fast.body).toEqual(connect.body);
    expect(resultsOf(fast.body)).toEqual([
      "joe: done",
      "error 9: shoal.v1.FunctionService: the runtime sent protocol version 2, this function endpoint speaks version 1: upgrade @shoal/sdk in the function endpoint so both speak the same version",
      "ann: done",
    ]);
    // Logged as refused, as an Invoke of it alone would be (once by each path).
    expect(warnings).toHaveLength(2);
    expect(warnings[0]).toContain('"code":"FailedPrecondition"');
  });

  it("refuses an InvokeMany as a whole: over maxRequestBytes (all its requests together), without requests, without the token", async () => {
    // Each request alone is under the limit of 1024 bytes; together they are over it.
    const parts = ["a", "b", "c"].map((k) => view(k.repeat(300)));
    expect(parts.every((p) => bytesOf(p).byteLength < 1024)).toBe(true);
    const big = manyBytesOf(...parts);
    const sized = await both({ path: manyPath, headers: { ...runtimeHeaders, "content-length": String(big.byteLength) }, body: big });
    expect(sized.fastReachedConnectNode).toBe(false);
    expect([sized.fast.status, json(sized.fast)]).toEqual([sized.connect.status, json(sized.connect)]);
    expect(json(sized.fast)).toEqual({
      code: "resource_exhausted",
      message: `message size ${big.byteLength} is larger than configured readMaxBytes 1024`,
    });
    const empty = await both({ path: manyPath, headers: runtimeHeaders, body: manyBytesOf() });
    expect(empty.fastReachedConnectNode).toBe(false);
    expect([empty.fast.status, json(empty.fast)]).toEqual([empty.connect.status, json(empty.connect)]);
    expect(json(empty.fast)).toEqual({
      code: "invalid_argument",
      message: "shoal.v1.FunctionService.InvokeMany: invalid request: no requests to run",
    });
    const { authorization: _, ...anonymous } = runtimeHeaders;
    const refused = await both({ path: manyPath, headers: anonymous, body: manyBytesOf(view("joe")) });
    expect(refused.fastReachedConnectNode).toBe(true);
    expect([refused.fast.status, json(refused.fast)]).toMatchObject([401, { code: "unauthenticated" }]);
  });

  it("leaves other procedures, GET, JSON and compression to connect-node", async () => {
    const other = await both({ path: "/shoal.v1.FunctionService/Nope", headers: runtimeHeaders, body: bytesOf(view("joe")) });
    expect(other.fastReachedConnectNode).toBe(true);
    expect([other.fast.status, other.fast.body.byteLength]).toEqual([404, 0]);
    const get = await both({ method: "GET", headers: { authorization: runtimeHeaders.authorization } });
    expect(get.fastReachedConnectNode).toBe(true);
    expect(get.fast.status).toBe(405);
    const asJson = await both({
      headers: { ...runtimeHeaders, "content-type": "application/json" },
      body: new TextEncoder().encode(JSON.stringify({ protocolVersion: functionProtocolVersion })),
    });
    expect(asJson.fastReachedConnectNode).toBe(true);
    expect([asJson.fast.status, json(asJson.fast)]).toEqual([
      400,
      { code: "invalid_argument", message: "shoal.v1.FunctionService.Invoke: invalid request: no address (the function type is empty)" },
    ]);
    const gzip = await both({ headers: { ...runtimeHeaders, "accept-encoding": "gzip" }, body: bytesOf(view("joe")) });
    expect(gzip.fastReachedConnectNode).toBe(true);
    expect(gzip.fast.status).toBe(200);
  });
});

describe("serveFunctions' fetch handler", () => {
  it("answers InvokeMany as the node listener does", async () => {
    const endpoint = serveFunctions(functions, { logger });
    const body = manyBytesOf(view("joe"), view("ann"));
    const answer = await endpoint.fetch(
      new Request(`http://endpoint${manyPath}`, { method: "POST", headers: { "content-type": "application/proto" }, body }),
    );
    expect(answer.status).toBe(200);
    expect(resultsOf(new Uint8Array(await answer.arrayBuffer()))).toEqual(["joe: done", "ann: done"]);
  });
});

describe("a listenFunctions server with the fast path", () => {
  it("lets an Invoke in flight finish when it closes", async () => {
    const server = await listenFunctions(functions, { port: 0, host: "127.0.0.1", bearerToken: token, logger });
    const started = new Promise<void>((resolve) => {
      slowStarted.resolve = resolve;
    });
    const answer = send(server.url, "2", { headers: runtimeHeaders, body: bytesOf(view("slow")) });
    await started;
    const closed = server.close();
    releaseSlow();
    const done = await answer;
    await closed;
    expect(done.status).toBe(200);
    expect(fromBinary(InvokeResponseSchema, done.body).outcomes[0]?.status.case).toBe("done");
  });

  it("keeps serving after a client resets its stream in the middle of a body", async () => {
    const server = await listenFunctions(functions, { port: 0, host: "127.0.0.1", bearerToken: token, logger });
    try {
      const session = http2.connect(server.url);
      const stream = session.request({ ":method": "POST", ":path": invokePath, ...runtimeHeaders }, { endStream: false });
      stream.write(bytesOf(view("joe")).subarray(0, 5));
      await new Promise<void>((resolve) => stream.write(new Uint8Array(0), () => resolve()));
      stream.close(http2.constants.NGHTTP2_CANCEL);
      session.close();
      const after = await send(server.url, "2", { headers: runtimeHeaders, body: bytesOf(view("joe")) });
      expect(after.status).toBe(200);
    } finally {
      await server.close();
    }
  });
});
