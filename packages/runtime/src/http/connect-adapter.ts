// The ingress's Connect adapter: connect-node's `connectNodeAdapter`, less one
// cost per HTTP/1.1 request.
//
// connect-node aborts each request's signal when its response closes, after a
// complete answer too, and with no reason, so Node builds a `DOMException` with
// its stack trace for every request: about 10 µs of CPU, 4% of a request to
// the counter of bench/ (profiled at 64 requests in flight). After a complete
// answer nobody is left to tell: the handler has returned, and connect removed
// its listeners from the signal. So this adapter passes the signal's close
// event on only when the response closed before it was finished (the client
// went away); then the abort is connect-node's own, with its reason. HTTP/2
// requests go through connect-node unchanged (it watches their stream, not the
// response). The router, the request and response conversions and the error
// handling are connect-node's exported parts.
import { EventEmitter } from "node:events";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import { Code, ConnectError, type ConnectRouter, type ConnectRouterOptions, createConnectRouter } from "@connectrpc/connect";
import {
  compressionBrotli,
  compressionGzip,
  type connectNodeAdapter,
  universalRequestFromNodeRequest,
  universalResponseToNodeResponse,
} from "@connectrpc/connect-node";
import { type ConnectUnaryOptions, type ConnectUnaryRoute, createConnectUnaryHandler, type NodeResponse } from "@shoal/sdk/internal";

// connect-es's default readMaxBytes, and its largest.
const maxReadMaxBytes = 0xffffffff;

/** A request listener for node:http and node:http2, as `connectNodeAdapter` returns. */
type NodeHandler = ReturnType<typeof connectNodeAdapter>;

/** Options of {@link createConnectAdapter}: the router's, the routes and what answers other paths. */
export interface ConnectAdapterOptions extends ConnectRouterOptions {
  routes(router: ConnectRouter): void;
  /**
   * Routes that are also in `routes`, answered first by the shared unary
   * handler when a request is plain Connect unary over HTTP/1.1 and
   * `accepts` it; every error answer passes through `rewriteError`.
   */
  unary?: Pick<ConnectUnaryOptions, "accepts" | "rewriteError"> & { readonly routes: readonly ConnectUnaryRoute[] };
  fallback: NodeHandler;
}

/** A request listener for node:http and node:http2 that serves the routes, as `connectNodeAdapter` does. */
export function createConnectAdapter(options: ConnectAdapterOptions): NodeHandler {
  const acceptCompression = options.acceptCompression ?? [compressionGzip, compressionBrotli];
  const router = createConnectRouter({ ...options, acceptCompression });
  options.routes(router);
  const paths = new Map(router.handlers.map((handler) => [handler.requestPath, handler]));
  const unary = createConnectUnaryHandler(options.unary?.routes ?? [], {
    readMaxBytes: options.readMaxBytes ?? maxReadMaxBytes,
    // connect-es's default JSON options are the router's when it names none.
    jsonOptions: options.jsonOptions ?? {},
    acceptCompression,
    compressMinBytes: options.compressMinBytes,
    // h2c requests go to connect-node, which watches their streams.
    http2: false,
    accepts: options.unary?.accepts,
    rewriteError: options.unary?.rewriteError,
  });
  return ((req: IncomingMessage | Http2ServerRequest, res: ServerResponse | Http2ServerResponse) => {
    if (unary(req, res as NodeResponse)) return;
    const handler = paths.get(req.url?.split("?", 1)[0] ?? "");
    if (handler === undefined) {
      (options.fallback as (req: IncomingMessage | Http2ServerRequest, res: ServerResponse | Http2ServerResponse) => void)(req, res);
      return;
    }
    const universalRequest =
      "stream" in req
        ? universalRequestFromNodeRequest(req, res as Http2ServerResponse, undefined, undefined)
        : universalRequestFromNodeRequest(req, unfinishedClose(res), undefined, undefined);
    handler(universalRequest)
      .then((universalResponse) => universalResponseToNodeResponse(universalResponse, res))
      .catch((reason: unknown) => {
        if (ConnectError.from(reason).code === Code.Aborted) return;
        console.error(`handler for rpc ${handler.method.name} of ${handler.service.typeName} failed`, reason);
      });
  }) as NodeHandler;
}

/** An emitter of `res`'s close event, emitted only when `res` closed before it was finished. */
function unfinishedClose(res: ServerResponse | Http2ServerResponse): ServerResponse {
  const close = new EventEmitter();
  res.once("close", () => {
    if (!res.writableFinished) close.emit("close");
  });
  // connect-node listens on it for "close" (once/off) and reads nothing else.
  return close as unknown as ServerResponse;
}
