import type { Server as Http1Server, IncomingMessage } from "node:http";
import type { Http2Server, Http2ServerRequest, ServerHttp2Session } from "node:http2";
import type { Socket } from "node:net";

/** What is used of an HTTP/1.1 or HTTP/2 response. */
interface Response {
  readonly headersSent: boolean;
  setHeader(name: string, value: string): unknown;
}

/** Timeouts of `trackConnections`, in ms. */
export interface ConnectionTimeouts {
  /** From accept to the first request's headers (HTTP/1.1) or the HTTP/2 preface. */
  readonly headersTimeoutMs: number;
  /** Without a request in flight (keep-alive between requests, h2c session without streams). */
  readonly idleTimeoutMs: number;
}

/** The connections of one listening port, from accept to close. */
export interface Connections {
  /** A socket just accepted: hands it to the server that speaks the protocol of its first bytes. */
  accept(socket: Socket): void;
  /** A request started; the returned function is called once its response has closed. */
  request(req: IncomingMessage | Http2ServerRequest, res: Response): () => void;
  /**
   * Closes the connections without a request in flight now, and asks the
   * others to close once their requests are done: HTTP/1.1 responses get
   * `Connection: close`, h2c sessions a GOAWAY.
   */
  drain(): void;
  /** Destroys every connection, requests in flight or not. */
  destroyAll(): void;
}

interface Connection {
  readonly socket: Socket;
  session?: ServerHttp2Session;
  readonly responses: Set<Response>;
  timer?: NodeJS.Timeout;
  /** Whether `timer` is the idle timer, which checks on expiry whether the connection is still idle. */
  idleTimer: boolean;
  /** When the connection last became idle (`performance.now()`). */
  idleSince: number;
}

const http2Preface = Buffer.from("PRI * HTTP/2.0\r\n");

/**
 * Tracks every connection of a port served by an HTTP/1.1 and an HTTP/2
 * server that never listen themselves. Because of that, Node's own connection
 * tracking (`headersTimeout`, `closeIdleConnections`) never sees these sockets,
 * and a connection that sends nothing never reaches either server: the
 * timeouts and the graceful close live here.
 */
export function trackConnections(http1: Http1Server, http2: Http2Server, timeouts: ConnectionTimeouts): Connections {
  const connections = new Set<Connection>();
  const bySocket = new WeakMap<Socket, Connection>();
  const bySession = new WeakMap<ServerHttp2Session, Connection>();
  let draining = false;

  const disarm = (conn: Connection) => {
    clearTimeout(conn.timer);
    conn.timer = undefined;
    conn.idleTimer = false;
  };
  const arm = (conn: Connection, ms: number, expire: () => void) => {
    disarm(conn);
    conn.timer = setTimeout(expire, ms).unref();
  };
  // Nothing is in flight on the connection: close it, without cutting off a response still being written.
  const close = (conn: Connection) => {
    disarm(conn);
    if (conn.session !== undefined) {
      // GOAWAY: the client opens no more streams; Node destroys the session once the open ones are done.
      conn.session.close();
      return;
    }
    const { socket } = conn;
    if (socket.writableEnded) return;
    if (socket.writableLength === 0) socket.destroy();
    else socket.end(() => socket.destroy());
  };
  // The idle timer is not moved for every request, which would cost a timer per request: it
  // stays armed while requests come and go, and when it fires it looks at when the connection
  // last became idle, waiting on for the rest of the timeout if that was too recent.
  const expireIdle = (conn: Connection) => {
    conn.timer = undefined;
    conn.idleTimer = false;
    // Requests in flight: the last to finish arms it again.
    if (conn.responses.size > 0) return;
    const left = conn.idleSince + timeouts.idleTimeoutMs - performance.now();
    if (left > 0) armIdle(conn, left);
    else close(conn);
  };
  const armIdle = (conn: Connection, ms: number) => {
    arm(conn, ms, () => expireIdle(conn));
    conn.idleTimer = true;
  };
  const waitForRequest = (conn: Connection) => {
    conn.idleSince = performance.now();
    if (!conn.idleTimer) armIdle(conn, timeouts.idleTimeoutMs);
  };

  const handOff = (conn: Connection, head: Buffer) => {
    const isHttp2 = head.length > 0 && http2Preface.subarray(0, head.length).equals(head);
    if (!isHttp2) {
      http1.emit("connection", conn.socket);
      return;
    }
    // The server makes the session while it handles "connection".
    const onSession = (session: ServerHttp2Session) => {
      conn.session = session;
      bySession.set(session, conn);
      session.once("remoteSettings", () => {
        if (conn.responses.size === 0) waitForRequest(conn);
      });
    };
    http2.once("session", onSession);
    http2.emit("connection", conn.socket);
    http2.off("session", onSession);
    if (draining) close(conn);
  };

  return {
    accept(socket) {
      const conn: Connection = { socket, responses: new Set(), idleTimer: false, idleSince: 0 };
      connections.add(conn);
      bySocket.set(socket, conn);
      // Until a server takes the socket over, nothing else listens for its errors, and a client's
      // reset would be an uncaught exception that takes the node down.
      socket.on("error", () => socket.destroy());
      socket.once("close", () => {
        disarm(conn);
        connections.delete(conn);
      });
      arm(conn, timeouts.headersTimeoutMs, () => socket.destroy());
      socket.once("readable", () => {
        const head: Buffer | null = socket.read(Math.min(http2Preface.length, socket.readableLength)) ?? socket.read();
        if (head === null) return;
        socket.unshift(head);
        handOff(conn, head);
      });
    },

    request(req, res) {
      const conn = "stream" in req ? bySession.get(req.stream.session as ServerHttp2Session) : bySocket.get(req.socket);
      if (conn === undefined) return () => {};
      // The idle timer stays: it sees the request in flight when it fires.
      if (!conn.idleTimer) disarm(conn);
      conn.responses.add(res);
      if (draining && conn.session === undefined && !res.headersSent) res.setHeader("connection", "close");
      return () => {
        conn.responses.delete(res);
        if (conn.responses.size > 0) return;
        if (draining) close(conn);
        else waitForRequest(conn);
      };
    },

    drain() {
      draining = true;
      for (const conn of connections) {
        if (conn.session !== undefined || conn.responses.size === 0) {
          close(conn);
          continue;
        }
        for (const res of conn.responses) {
          if (!res.headersSent) res.setHeader("connection", "close");
        }
      }
    },

    destroyAll() {
      for (const conn of connections) {
        disarm(conn);
        conn.session?.destroy();
        conn.socket.destroy();
      }
    },
  };
}
