// trackConnections over real sockets: the idle timer of a keep-alive connection.
import { createServer as createHttp1Server, type IncomingMessage, type ServerResponse } from "node:http";
import { createServer as createHttp2Server } from "node:http2";
import { createServer as createNetServer, type Server as NetServer, connect as netConnect, type Socket } from "node:net";
import { afterEach, describe, expect, it, vi } from "vitest";
import { type Connections, trackConnections } from "./connections.js";

let server: NetServer | undefined;
let connections: Connections | undefined;

afterEach(async () => {
  vi.restoreAllMocks();
  connections?.destroyAll();
  await new Promise<void>((resolve) => (server === undefined ? resolve() : server.close(() => resolve())));
  server = undefined;
  connections = undefined;
});

/** An HTTP/1.1 server behind trackConnections, as `listen` wires it; `/slow` answers once `release` is called. */
async function serve(idleTimeoutMs: number): Promise<{ port: number; release: () => void }> {
  let release = () => {};
  const handler = (req: IncomingMessage, res: ServerResponse) => {
    res.once("close", (connections as Connections).request(req, res));
    const answer = () => res.end("ok");
    if (req.url === "/slow") release = answer;
    else answer();
  };
  const tracked = trackConnections(createHttp1Server(handler), createHttp2Server(), { headersTimeoutMs: 60_000, idleTimeoutMs });
  connections = tracked;
  const net = createNetServer((socket) => tracked.accept(socket));
  server = net;
  await new Promise<void>((resolve) => net.listen(0, "127.0.0.1", resolve));
  const address = net.address();
  return { port: typeof address === "object" && address !== null ? address.port : 0, release: () => release() };
}

/** A keep-alive client on one socket: each `get` resolves with the response once it is complete. */
function client(port: number): { socket: Socket; get(path: string): Promise<string>; closed: Promise<void> } {
  const socket = netConnect(port, "127.0.0.1");
  socket.on("error", () => {});
  const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()));
  let received = "";
  let waiting: ((response: string) => void) | undefined;
  socket.setEncoding("utf8").on("data", (chunk: string) => {
    received += chunk;
    // Every response here ends with the body "ok" (Content-Length: 2).
    if (received.endsWith("\r\n\r\nok") && waiting !== undefined) {
      const response = received;
      received = "";
      const w = waiting;
      waiting = undefined;
      w(response);
    }
  });
  return {
    socket,
    closed,
    get(path) {
      const response = new Promise<string>((resolve) => {
        waiting = resolve;
      });
      socket.write(`GET ${path} HTTP/1.1\r\nHost: x\r\n\r\n`);
      return response;
    },
  };
}

describe("trackConnections", () => {
  it("arms no timer per request on a keep-alive connection, and closes it once idle", { timeout: 20_000 }, async () => {
    const { port } = await serve(300);
    const c = client(port);
    await c.get("/");
    const timers = vi.spyOn(globalThis, "setTimeout");
    for (let i = 0; i < 50; i++) expect(await c.get("/")).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    // Moving the idle timer on every request cost a timer each; one armed timer serves them all.
    expect(timers.mock.calls.length).toBeLessThan(5);
    vi.restoreAllMocks();
    await c.closed;
  });

  it("does not close a connection whose request outlasts the idle timeout, and closes it once that request is done", async () => {
    const { port, release } = await serve(300);
    const c = client(port);
    // The first request arms the idle timer; the second is in flight when it fires.
    await c.get("/");
    const slow = c.get("/slow");
    let closedEarly = false;
    void c.closed.then(() => {
      closedEarly = true;
    });
    await new Promise((resolve) => setTimeout(resolve, 900));
    expect(closedEarly).toBe(false);
    release();
    expect(await slow).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    await c.closed;
  });
});
