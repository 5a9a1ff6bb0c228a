// The ingress's connections over real sockets: timeouts for connections that
// send nothing or go idle, and a graceful close under keep-alive traffic.
import { Agent, request as http1Request } from "node:http";
import { type ClientHttp2Session, connect as http2Connect } from "node:http2";
import { connect as netConnect, type Socket } from "node:net";
import { implement } from "@shoal/sdk";
import { afterEach, describe, expect, it } from "vitest";
import { GreeterFunction } from "../../../../examples/greeter/src/gen/greeter/v1/greeter_shoal.js";
import { greeter } from "../../../../examples/greeter/src/greeter.js";
import { createRuntime, type Runtime } from "../runtime.js";
import { createMemoryStorage } from "../storage/memory/memory-storage.js";
import { type ListenOptions, listen, type RuntimeServer } from "./server.js";

const path = "/greeter.v1.Greeter/Greet";
let runtime: Runtime | undefined;
let server: RuntimeServer | undefined;
// Greet for the name "slow" waits until the test opens this gate.
let openGate: () => void = () => {};
let gate = Promise.resolve();
function closeGate() {
  gate = new Promise((resolve) => {
    openGate = resolve;
  });
}

async function serve(options: ListenOptions): Promise<RuntimeServer> {
  runtime = createRuntime({
    functions: [
      implement(GreeterFunction, {
        ...greeter,
        async greet(req, ctx) {
          if (req.name === "slow") await gate;
          return greeter.greet(req, ctx);
        },
      }),
    ],
    storage: createMemoryStorage(),
    shards: 4,
    logger: "silent",
  });
  await runtime.start();
  server = await listen(runtime, { port: 0, ...options });
  return server;
}

afterEach(async () => {
  openGate();
  await server?.close();
  await runtime?.close();
  server = undefined;
  runtime = undefined;
});

/** A raw TCP connection to the server; `closed` resolves once the server has closed it. */
function rawConnection(port: number): { socket: Socket; received: () => string; closed: Promise<void> } {
  const socket = netConnect(port, "127.0.0.1");
  let received = "";
  socket.setEncoding("utf8").on("data", (chunk: string) => {
    received += chunk;
  });
  socket.on("error", () => {});
  const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()));
  return { socket, received: () => received, closed };
}

function rawRequest(name: string): string {
  const body = JSON.stringify({ name });
  return `POST ${path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`;
}

interface Reply {
  status: number;
  body: string;
  connection?: string;
}

function postHttp1(port: number, agent: Agent, name: string): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http1Request(
      { host: "127.0.0.1", port, path, method: "POST", agent, headers: { "content-type": "application/json" } },
      (res) => {
        let body = "";
        res.setEncoding("utf8").on("data", (chunk: string) => {
          body += chunk;
        });
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body, connection: res.headers.connection }));
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(JSON.stringify({ name }));
  });
}

function postHttp2(session: ClientHttp2Session, name: string): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const stream = session.request({ ":method": "POST", ":path": path, "content-type": "application/json" });
    let status = 0;
    let body = "";
    stream.on("response", (headers) => {
      status = Number(headers[":status"]);
    });
    stream.setEncoding("utf8").on("data", (chunk: string) => {
      body += chunk;
    });
    stream.on("end", () => resolve({ status, body }));
    stream.on("error", reject);
    stream.end(JSON.stringify({ name }));
  });
}

/** A full, correct reply to Greet for `name`. */
function expectGreeting(reply: Reply, name: string) {
  expect(reply.status).toBe(200);
  expect(JSON.parse(reply.body)).toMatchObject({ greeting: `Hello, ${name}!` });
}

describe("connection timeouts", () => {
  // Small timeouts for what they are tested on; a generous one otherwise, so a busy machine cannot hit it.
  const headersTimeout = { headersTimeoutMs: 200, idleTimeoutMs: 60_000 };
  const idleTimeout = { headersTimeoutMs: 60_000, idleTimeoutMs: 300 };

  it("closes connections that send nothing", { timeout: 20_000 }, async () => {
    const { port } = await serve(headersTimeout);
    const connections = Array.from({ length: 20 }, () => rawConnection(port));
    await Promise.all(connections.map((c) => c.closed));
    expect(connections.map((c) => c.received())).toEqual(connections.map(() => ""));
  });

  it("closes a connection that sends half a request's headers, or half the HTTP/2 preface", { timeout: 20_000 }, async () => {
    const { port } = await serve(headersTimeout);
    const http1 = rawConnection(port);
    http1.socket.write(`POST ${path} HTTP/1.1\r\nHost: x\r\n`);
    const http2 = rawConnection(port);
    http2.socket.write("PRI * HTTP/2.0\r\n");
    await Promise.all([http1.closed, http2.closed]);
  });

  it("closes an HTTP/1.1 keep-alive connection that goes idle, but not one with a request in flight", { timeout: 20_000 }, async () => {
    const { port } = await serve(idleTimeout);
    closeGate();
    const busy = rawConnection(port);
    busy.socket.write(rawRequest("slow"));
    const idle = rawConnection(port);
    idle.socket.write(rawRequest("ada"));
    await idle.closed;
    expect(idle.received()).toMatch(/^HTTP\/1\.1 200 OK\r\n[\s\S]*Hello, ada!/);
    // The busy connection waited longer than the idle one: its request still gets its reply.
    openGate();
    await new Promise<void>((resolve) => busy.socket.on("data", () => busy.received().includes("Hello, slow!") && resolve()));
    expect(busy.received()).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    busy.socket.destroy();
  });

  it("sends GOAWAY to an h2c session without open streams", { timeout: 20_000 }, async () => {
    const { url } = await serve(idleTimeout);
    const session = http2Connect(url);
    session.on("error", () => {});
    const goaway = new Promise<void>((resolve) => session.once("goaway", () => resolve()));
    const closed = new Promise<void>((resolve) => session.once("close", () => resolve()));
    expectGreeting(await postHttp2(session, "grace"), "grace");
    await goaway;
    await closed;
  });
});

describe("close under keep-alive traffic", () => {
  it("closes idle connections at once, finishes requests in flight, and asks clients to go away", { timeout: 30_000 }, async () => {
    // A long grace: the test's timeout catches a close that waits it out.
    const { port, url } = await serve({ shutdownGraceMs: 60_000 });
    closeGate();
    const agent = new Agent({ keepAlive: true, maxSockets: 4 });
    const session = http2Connect(url);
    session.on("error", () => {});
    const replies: Array<{ name: string; reply: Reply }> = [];
    const errors: unknown[] = [];
    let closing = false;
    const closingReplies = () => replies.length;
    // Each worker sends one request after another until its connection is refused or closed.
    const worker = async (send: (name: string) => Promise<Reply>, id: string) => {
      for (let i = 0; ; i++) {
        const name = `${id}-${i}`;
        try {
          replies.push({ name, reply: await send(name) });
        } catch (err) {
          errors.push(err);
          if (closing) return;
          throw err;
        }
      }
    };
    const workers = [
      ...["a", "b", "c", "d"].map((id) => worker((name) => postHttp1(port, agent, name), `h1${id}`)),
      ...["a", "b", "c", "d"].map((id) => worker((name) => postHttp2(session, name), `h2${id}`)),
    ];
    // A request in flight when the close begins, on its own connection.
    const slowAgent = new Agent({ keepAlive: true });
    const slow = postHttp1(port, slowAgent, "slow");
    while (closingReplies() < 40) await new Promise((resolve) => setImmediate(resolve));

    closing = true;
    const closed = server?.close();
    // Every client stops once the server has refused or closed its connection; only then does
    // the slow request finish, so the close cannot complete by chance between two requests.
    await Promise.all(workers);
    openGate();
    const slowReply = await slow;
    await closed;

    expectGreeting(slowReply, "slow");
    expect(slowReply.connection).toBe("close");
    for (const { name, reply } of replies) expectGreeting(reply, name);
    // Errors a client may retry: the request never reached a handler.
    const retryable = /ECONNREFUSED|ECONNRESET|ERR_HTTP2_GOAWAY_SESSION|ERR_HTTP2_INVALID_SESSION|NGHTTP2_REFUSED_STREAM/;
    for (const err of errors) expect(`${(err as { code?: string }).code}: ${String(err)}`).toMatch(retryable);
    agent.destroy();
    slowAgent.destroy();
    session.destroy();
    server = undefined;
  });
});
