// The ingress's answers through the shared Connect unary handler (@shoal/sdk's
// serve/connect-unary.ts) against connect-es's, over real sockets:
// two nodes alike, one answering plain Connect requests with Shoal's handler
// (as `listen` does), one with connect-es alone. Every request of the table
// goes to both, in the same order, and must get the same status, headers and
// body, byte for byte.
import { once } from "node:events";
import { createServer, type IncomingHttpHeaders, request, type Server } from "node:http";
import { type AddressInfo, connect } from "node:net";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { implement, ShoalError } from "@shoal/sdk";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GreetRequestSchema } from "../../../../examples/greeter/src/gen/greeter/v1/greeter_pb.js";
import { GreeterFunction } from "../../../../examples/greeter/src/gen/greeter/v1/greeter_shoal.js";
import { greeter } from "../../../../examples/greeter/src/greeter.js";
import { createRuntime, type Runtime } from "../runtime.js";
import { createMemoryStorage } from "../storage/memory/memory-storage.js";
import { createConnectAdapter } from "./connect-adapter.js";
import { ingressAdapterOptions } from "./server.js";

const maxRequestBytes = 2048;
const runtimes: Runtime[] = [];
const servers: Server[] = [];
let own: string;
let connectEs: string;
// Calls that reached a route through Shoal's handler.
let ownHandlerCalls = 0;

async function node(ownHandler: boolean): Promise<string> {
  const runtime = createRuntime({
    functions: [
      implement(GreeterFunction, {
        ...greeter,
        greet(req, ctx) {
          if (req.name === "crash") throw new Error("the greeter tripped");
          if (req.name === "refuse") throw new ShoalError(Code.PermissionDenied, "not greeting refuse");
          if (req.name.startsWith("big")) return { greeting: `Hello, ${req.name}${"!".repeat(1500)}`, times: 0 };
          return greeter.greet(req, ctx);
        },
      }),
    ],
    storage: createMemoryStorage(),
    shards: 4,
    maxRequestBytes,
    retry: { maxAttempts: 2, initialDelayMs: 1, maxDelayMs: 1 },
    logger: "silent",
  });
  runtimes.push(runtime);
  await runtime.start();
  const options = ingressAdapterOptions(runtime);
  const unary = options.unary;
  if (unary === undefined) throw new Error("the ingress has no unary routes");
  const routes = ownHandler
    ? unary.routes.map((route) => ({
        method: route.method,
        call(...args: Parameters<typeof route.call>) {
          ownHandlerCalls++;
          return route.call(...args);
        },
      }))
    : [];
  const server = createServer(createConnectAdapter({ ...options, unary: { ...unary, routes } }));
  servers.push(server);
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

beforeAll(async () => {
  own = await node(true);
  connectEs = await node(false);
});
afterAll(async () => {
  for (const server of servers) {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
  for (const runtime of runtimes) await runtime.close();
});

interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

/** POSTs `body` (in pieces, chunked, when it is an array) over a fresh HTTP/1.1 connection. */
function post(
  base: string,
  path: string,
  headers: Record<string, string>,
  body: Uint8Array | string | (Uint8Array | string)[],
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(`${base}${path}`, { method: "POST", headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (chunk: Buffer) => chunks.push(chunk));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString("base64") }));
      res.on("error", reject);
    });
    req.on("error", reject);
    if (Array.isArray(body)) {
      for (const piece of body) req.write(piece);
      req.end();
    } else {
      req.end(body);
    }
  });
}

/**
 * What must match: all headers but the date, the connection's and the
 * framing (connect-es drops the Content-Length of an error it rewrites and
 * sends it chunked); the message id's presence, not its value.
 */
function comparable({ status, headers, body }: Answer) {
  const {
    date,
    connection,
    "keep-alive": keepAlive,
    "content-length": length,
    "transfer-encoding": chunked,
    "shoal-message-id": messageId,
    ...rest
  } = headers;
  return { status, headers: rest, messageId: messageId !== undefined, body };
}

const greet = "/greeter.v1.Greeter/Greet";
const proto = { "content-type": "application/proto" };
const json = { "content-type": "application/json" };
const binary = (name: string) => toBinary(GreetRequestSchema, create(GreetRequestSchema, { name }));

// [what, headers, body, calls of a route through Shoal's handler: 0 where connect-es
// takes the request, or where it fails before reaching the route]
const cases: [string, Record<string, string>, Uint8Array | string | (Uint8Array | string)[], 0 | 1][] = [
  ["binary", proto, binary("ada"), 1],
  ["JSON", json, JSON.stringify({ name: "ada" }), 1],
  ["JSON with a charset (connect-es)", { "content-type": "application/json; charset=utf-8" }, JSON.stringify({ name: "ada" }), 0],
  ["a body in pieces", json, ['{"name":', '"bob"}'], 1],
  ["malformed binary", proto, new Uint8Array([0xff, 0xff, 0xff]), 0],
  ["malformed JSON", json, '{"name":', 0],
  ["a JSON field of the wrong type", json, '{"name": 5}', 0],
  ["an unknown JSON field", json, '{"name": "eve", "nope": 1}', 0],
  ["an empty key", json, "{}", 1],
  ["a ShoalError", json, JSON.stringify({ name: "refuse" }), 1],
  ["a handler that throws", json, JSON.stringify({ name: "crash" }), 1],
  ["an oversized body with Content-Length", json, JSON.stringify({ name: "y".repeat(3000) }), 0],
  ["an oversized body, chunked", json, ['{"name": "', "z".repeat(1500), "z".repeat(1500), '"}'], 0],
  ["a one-way send", { ...json, "shoal-send": "1" }, JSON.stringify({ name: "sent" }), 1],
  ["a bad Shoal-Delay-Ms", { ...json, "shoal-send": "1", "shoal-delay-ms": "soon" }, JSON.stringify({ name: "d" }), 1],
  ["an Idempotency-Key", { ...json, "idempotency-key": "k1" }, JSON.stringify({ name: "kay" }), 1],
  ["the same Idempotency-Key again", { ...json, "idempotency-key": "k1" }, JSON.stringify({ name: "kay" }), 1],
  ["a reply over 1 KiB, gzip accepted", { ...json, "accept-encoding": "gzip" }, JSON.stringify({ name: "big-g" }), 1],
  ["a reply over 1 KiB, br accepted", { ...proto, "accept-encoding": "br, gzip" }, binary("big-b"), 1],
  ["a reply over 1 KiB, nothing accepted", { ...proto, "accept-encoding": "zstd" }, binary("big-n"), 1],
  ["a reply over 1 KiB, no Accept-Encoding", proto, binary("big-m"), 1],
  ["a Connect-Timeout-Ms", { ...proto, "connect-timeout-ms": "5000" }, binary("tim"), 1],
  ["a malformed Connect-Timeout-Ms (connect-es)", { ...proto, "connect-timeout-ms": "soon" }, binary("tim"), 0],
  ["a gzipped body (connect-es)", { ...json, "content-encoding": "gzip" }, new Uint8Array([1, 2, 3]), 0],
  ["Shoal-Reject-Unknown-Fields (connect-es)", { ...json, "shoal-reject-unknown-fields": "1" }, '{"name": "r", "nope": 1}', 0],
  ["a query string (connect-es)", json, JSON.stringify({ name: "q" }), 0],
  ["a method the service lacks (not a route)", json, "{}", 0],
];

describe("Shoal's unary Connect handler", () => {
  it.each(cases)("answers %s as connect-es does", async (what, headers, body, ownCalls) => {
    const path = what.startsWith("a query string") ? `${greet}?x=1` : what.startsWith("a method") ? "/greeter.v1.Greeter/Nope" : greet;
    const before = ownHandlerCalls;
    const expected = await post(connectEs, path, headers, body);
    expect(ownHandlerCalls).toBe(before);
    const actual = await post(own, path, headers, body);
    expect(comparable(actual)).toEqual(comparable(expected));
    // Shoal's handler always says how long its answer is.
    if (!/\((connect-es|not a route)\)$/.test(what)) {
      expect(actual.headers["content-length"]).toBe(String(Buffer.from(actual.body, "base64").length));
    }
    expect(ownHandlerCalls - before).toBe(ownCalls);
  });

  it("drops a request whose client goes away mid-body, and keeps serving", async () => {
    const gone = new Promise<void>((resolve) => {
      const req = request(`${own}${greet}`, { method: "POST", headers: { ...json, "content-length": "100" }, agent: false });
      req.on("error", () => resolve());
      req.write('{"name": "half');
      setTimeout(() => {
        req.destroy();
        resolve();
      }, 50);
    });
    const before = ownHandlerCalls;
    await gone;
    const after = await post(own, greet, json, JSON.stringify({ name: "whole" }));
    expect([after.status, JSON.parse(Buffer.from(after.body, "base64").toString())]).toEqual([
      200,
      { greeting: "Hello, whole!", times: 1 },
    ]);
    expect(ownHandlerCalls - before).toBe(1);
  });

  it("answers pipelined requests on one connection in order", async () => {
    const { port } = new URL(own);
    const socket = connect(Number(port), "127.0.0.1");
    const names = ["p1", "p2", "p3", "p4"];
    let received = "";
    socket.setEncoding("latin1").on("data", (chunk: string) => {
      received += chunk;
    });
    const requests = names.map((name) => {
      const body = JSON.stringify({ name });
      return `POST ${greet} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`;
    });
    // All four in one write: each is answered, in the order sent.
    socket.write(requests.join(""));
    await expect.poll(() => received.match(/"greeting"/g)?.length ?? 0).toBe(names.length);
    socket.destroy();
    const greetings = [...received.matchAll(/"greeting":"Hello, (p\d)!"/g)].map((m) => m[1]);
    expect(greetings).toEqual(names);
  });

  it("commits a request whose client stopped sending (half-closed) after it, once, and keeps serving", async () => {
    const body = JSON.stringify({ name: "left" });
    const { port } = new URL(own);
    const socket = connect(Number(port), "127.0.0.1");
    await once(socket, "connect");
    socket.end(`POST ${greet} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
    // Count reads without counting: the greeting above committed exactly once.
    const count = async () => JSON.parse(Buffer.from((await post(own, "/greeter.v1.Greeter/Count", json, body)).body, "base64").toString());
    await expect.poll(count).toEqual({ times: 1 });
    socket.destroy();
    expect(await count()).toEqual({ times: 1 });
  });
});
