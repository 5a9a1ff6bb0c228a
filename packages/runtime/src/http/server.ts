import { createServer as createHttp1Server, type Server as Http1Server } from "node:http";
import { createServer as createHttp2Server, type Http2Server } from "node:http2";
import { createServer as createNetServer, type Server as NetServer } from "node:net";
import type { ConnectRouter } from "@connectrpc/connect";
import { headers as shoalHeaders } from "@shoal/sdk";
import type { ClusterStatusReader } from "../cluster/cluster-status.js";
import { defaults } from "../config/defaults.js";
import type { NodeRuntime } from "../node/runtime.js";
import { type ConnectAdapterOptions, createConnectAdapter } from "./connect-adapter.js";
import { trackConnections } from "./connections.js";
import { toConnectError } from "./errors.js";
import { answerUnrouted, explainRejections } from "./http-answers.js";
import { ingressRoutes, rewriteRequestError } from "./ingress.js";
import { shoalRoutes } from "./routes.js";

/** Options of `listen`. */
export interface ListenOptions {
  /** Port; 0 picks a free one. Default 8080. */
  readonly port?: number;
  /** Interface to bind. Default "127.0.0.1". */
  readonly host?: string;
  /** On close, how long requests in flight may take to finish, in ms. Default 5 000. */
  readonly shutdownGraceMs?: number;
  /**
   * How long a new connection may take to send its first request's headers
   * (HTTP/1.1) or the HTTP/2 preface, in ms; then it is closed. Default 10 000.
   */
  readonly headersTimeoutMs?: number;
  /**
   * How long a connection may stay without a request in flight, in ms: an
   * HTTP/1.1 keep-alive connection between requests, an h2c session without
   * open streams (it gets a GOAWAY). Then it is closed. Default 60 000.
   */
  readonly idleTimeoutMs?: number;
  /** Reads the cluster's records in NATS, for the admin status (a node on the nats backend). Default: none; the status lists this node only. */
  readonly clusterStatus?: ClusterStatusReader;
}

/** A listening ingress. */
export interface RuntimeServer {
  /** `http://host:port`. */
  readonly url: string;
  readonly port: number;
  /**
   * Stops accepting connections, closes idle ones at once, lets requests in
   * flight finish (up to `shutdownGraceMs`) while asking their clients to
   * close (HTTP/1.1 `Connection: close`, h2c GOAWAY), then closes every
   * connection.
   */
  close(): Promise<void>;
}

/**
 * Serves the runtime's Connect routes on one port for HTTP/1.1 and cleartext
 * HTTP/2 (h2c with prior knowledge, as gRPC clients use): each connection is
 * handed to the server that speaks the protocol of its first bytes.
 */
export async function listen(runtime: NodeRuntime, options: ListenOptions = {}): Promise<RuntimeServer> {
  const connectHandler = createConnectAdapter(ingressAdapterOptions(runtime, options.clusterStatus));
  const idleTimeoutMs = options.idleTimeoutMs ?? defaults.ingress.idleTimeoutMs;
  let inFlight = 0;
  let drained: (() => void) | undefined;
  const handler = (req: Parameters<typeof connectHandler>[0], res: Parameters<typeof connectHandler>[1]) => {
    inFlight++;
    const done = connections.request(req, res);
    res.once("close", () => {
      inFlight--;
      done();
      if (inFlight === 0) drained?.();
    });
    connectHandler(req, res);
  };
  // Node's own keep-alive timer, and the Keep-Alive header it sends, agree with the idle timeout.
  const http1: Http1Server = createHttp1Server({ keepAliveTimeout: idleTimeoutMs }, handler);
  const http2: Http2Server = createHttp2Server({}, handler);
  const connections = trackConnections(http1, http2, {
    headersTimeoutMs: options.headersTimeoutMs ?? defaults.ingress.headersTimeoutMs,
    idleTimeoutMs,
  });
  const server: NetServer = createNetServer((socket) => connections.accept(socket));
  const host = options.host ?? defaults.ingress.host;
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port ?? defaults.ingress.port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const address = server.address();
  const port = typeof address === "object" && address !== null ? address.port : (options.port ?? defaults.ingress.port);
  return {
    url: `http://${host.includes(":") ? `[${host}]` : host}:${port}`,
    port,
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      connections.drain();
      if (inFlight > 0) {
        await new Promise<void>((resolve) => {
          drained = resolve;
          setTimeout(resolve, options.shutdownGraceMs ?? defaults.ingress.shutdownGraceMs).unref();
        });
      }
      connections.destroyAll();
      await closed;
    },
  };
}

/**
 * What the ingress's Connect adapter serves and how: the node's routes, its
 * function routes also through Shoal's own unary handler, the request limits,
 * and `/metrics`, `/healthz` and the answers for unrouted paths.
 */
export function ingressAdapterOptions(runtime: NodeRuntime, clusterStatus?: ClusterStatusReader): ConnectAdapterOptions {
  let routed: ConnectRouter["handlers"] = [];
  const ingress = ingressRoutes(runtime);
  return {
    routes(router) {
      shoalRoutes(runtime, clusterStatus, ingress)(router);
      explainRejections(router, runtime.maxRequestBytes);
      routed = router.handlers;
    },
    unary: {
      routes: ingress,
      // `shoal call`'s check of a JSON request's fields is connect-es's route's (explainRejections).
      accepts: (req) => req.headers[shoalHeaders.rejectUnknownFields] === undefined,
      rewriteError: rewriteRequestError,
    },
    readMaxBytes: runtime.maxRequestBytes,
    jsonOptions: { ignoreUnknownFields: runtime.ignoreUnknownJsonFields },
    grpc: true,
    grpcWeb: true,
    connect: true,
    // Outside the Connect routes: metrics for Prometheus and a health check.
    fallback(req, res) {
      const path = req.url?.split("?", 1)[0];
      if (req.method === "GET" && path === "/metrics") {
        runtime.metrics().then(
          ({ contentType, text }) => {
            res.writeHead(200, { "content-type": contentType });
            res.end(text);
          },
          (err) => {
            res.writeHead(500, { "content-type": "text/plain" });
            res.end(toConnectError(err, "GET /metrics").message);
          },
        );
        return;
      }
      if (req.method === "GET" && path === "/healthz") {
        const { ready, reasons } = runtime.health();
        res.writeHead(ready ? 200 : 503, { "content-type": "text/plain" });
        res.end(ready ? "ok\n" : `${reasons.join("\n")}\n`);
        return;
      }
      answerUnrouted(req, res, routed);
    },
  };
}
