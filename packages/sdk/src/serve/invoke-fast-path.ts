// The runtime's Invoke and InvokeMany answered in front of connect-node, by
// the shared Connect unary handler (connect-unary.ts, which says why). It
// takes only the request the runtime sends: POST, binary proto, no
// compression, a well-formed Connect-Timeout-Ms, a Host or :authority, and
// the right token. Anything else (JSON, GET, compression, a missing or wrong
// token, a bad timeout, another path) goes to connect-node, so those answers
// stay connect-node's own.

import type { ConnectError } from "@connectrpc/connect";
import type { connectNodeAdapter } from "@connectrpc/connect-node";
import {
  FunctionService,
  type InvokeManyRequest,
  type InvokeManyResponse,
  type InvokeRequest,
  type InvokeResponse,
} from "../gen/shoal/v1/function_pb.js";
import { createConnectUnaryHandler, type NodeResponse } from "./connect-unary.js";

/** A node request listener for node:http and node:http2, as `connectNodeAdapter` returns. */
type NodeHandler = ReturnType<typeof connectNodeAdapter>;

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

/** `fallback` (connect-node) with the runtime's `Invoke` and `InvokeMany` requests answered before it. */
export function withInvokeFastPath(endpoint: InvokeEndpoint, fallback: NodeHandler): NodeHandler {
  const answer = createConnectUnaryHandler(
    [
      {
        method: FunctionService.method.invoke,
        call: (message: InvokeRequest) => endpoint.invoke(message).catch((err: unknown) => Promise.reject(endpoint.refused(err))),
      },
      {
        method: FunctionService.method.invokeMany,
        call: (message: InvokeManyRequest) => endpoint.invokeMany(message).catch((err: unknown) => Promise.reject(endpoint.refused(err))),
      },
    ],
    {
      readMaxBytes: endpoint.readMaxBytes,
      accepts: (req) =>
        ("authority" in req ? req.authority : req.headers.host) !== undefined && endpoint.authorized(req.headers.authorization),
    },
  );
  return ((req, res) => {
    if (!answer(req, res as NodeResponse)) fallback(req, res);
  }) as NodeHandler;
}
