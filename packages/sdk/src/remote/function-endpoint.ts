// The function side of shoal.v1.FunctionService, in web-standard code: the
// Connect routes and a fetch handler, which run on Deno, Bun and Workers as on
// Node. The node servers (`@shoal/sdk/serve`) mount the same routes.

import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter, type ConnectRouterOptions, createConnectRouter } from "@connectrpc/connect";
import { createFetchHandler } from "@connectrpc/connect/protocol";
import type { Logger } from "../context.js";
import {
  FunctionService,
  InvokeManyResponseSchema,
  InvokeManyResultSchema,
  type InvokeManyRequest as ProtoInvokeManyRequest,
  type InvokeManyResponse as ProtoInvokeManyResponse,
  type InvokeRequest as ProtoInvokeRequest,
  type InvokeResponse as ProtoInvokeResponse,
} from "../gen/shoal/v1/function_pb.js";
import { invokeBatch } from "../invoke-batch.js";
import type { Implementation, ShoalModule } from "../module.js";
import { invokeRequestFromProto, invokeResponseToProto } from "./function-protocol.js";

/** Options of a function endpoint (`serveFunctions`, `functionsFetchHandler`). */
export interface ServeFunctionsOptions {
  /** Where the endpoint and the handlers' `ctx.log` write. Default: JSON lines on stderr. */
  readonly logger?: Logger;
  /**
   * A token every request must carry as `Authorization: Bearer <token>`;
   * other requests get Unauthenticated before their body is read. Default:
   * none required (put the endpoint where only the runtime reaches it).
   */
  readonly bearerToken?: string;
  /** The largest request accepted (state plus a batch of messages); larger ones get ResourceExhausted. Default 32 MiB. */
  readonly maxRequestBytes?: number;
}

/** The default request size limit: a state and a batch of messages, well above the runtime's 4 MiB ingress limit. */
export const defaultMaxRequestBytes = 32 * 1024 * 1024;

/**
 * A module's functions as a remote function endpoint
 * (`shoal.v1.FunctionService`) for serverless platforms, `Deno.serve` and
 * `Bun.serve`: answers `POST /shoal.v1.FunctionService/Invoke` and
 * `/InvokeMany`, and 404 for any other path. Web-standard code only (no `node:` modules). On Node, use
 * `serveFunctions` from `@shoal/sdk/serve`, which gives this handler too.
 *
 * The runtime sends an instance's state and a batch of its messages; the
 * handlers run with the same invocation model as embedded mode and the answer
 * says what to commit. The endpoint keeps no state of its own, so it scales
 * and restarts freely. A function type or handler the module lacks runs to an
 * Unimplemented reply, as embedded. A request of another protocol version is
 * refused with FailedPrecondition naming both versions.
 *
 * @example
 * import { functionsFetchHandler } from "@shoal/sdk/fetch";
 * import functions from "./module.js";
 * Deno.serve(functionsFetchHandler(functions, { bearerToken: Deno.env.get("SHOAL_BEARER_TOKEN") }));
 */
export function functionsFetchHandler(module: ShoalModule, options: ServeFunctionsOptions = {}): (request: Request) => Promise<Response> {
  const { routes, routerOptions } = functionRoutes(module, options);
  const router = createConnectRouter(routerOptions);
  routes(router);
  const byPath = new Map(router.handlers.map((h) => [h.requestPath, createFetchHandler(h)]));
  return (request) => {
    const handler = byPath.get(new URL(request.url).pathname);
    if (handler !== undefined) return handler(request);
    return Promise.resolve(new Response(null, { status: 404 }));
  };
}

/**
 * The Connect routes of a function endpoint and the router options they need
 * (request size limit, bearer token, logging), for any Connect server adapter;
 * and the same pieces unrouted, for `serveFunctions`' node fast path: `invoke`
 * and `invokeMany` (the routes' implementations), `refused` (what the routes' interceptor does
 * with an error it throws), `authorized` and `readMaxBytes`.
 */
export function functionRoutes(module: ShoalModule, options: ServeFunctionsOptions) {
  const logger = options.logger ?? stderrLogger();
  const implementations = new Map<string, Implementation>(module.implementations.map((i) => [i.fn.typeName, i]));
  const batchOptions = {
    lookup: (typeName: string) => implementations.get(typeName),
    invocationLogger: (fields: Record<string, unknown>) => withFields(logger, fields),
  };
  async function invoke(message: ProtoInvokeRequest): Promise<ProtoInvokeResponse> {
    const request = invokeRequestFromProto(message);
    const response = await invokeBatch(request, batchOptions);
    const last = response.outcomes.at(-1);
    if (last?.status === "failed") {
      // The runtime logs it too, but only here is the endpoint's operator sure to see it.
      const envelope = request.messages[response.outcomes.length - 1]?.envelope;
      logger.warn("invocation failed", {
        function: request.address.type,
        key: request.address.key,
        handler: envelope?.handler,
        invocation: envelope?.id,
        retryable: last.retryable,
        error: last.message,
      });
    }
    return invokeResponseToProto(response);
  }
  const refused = (err: unknown): ConnectError => {
    const e = ConnectError.from(err);
    logger.warn("shoal.v1.FunctionService.Invoke refused", { code: Code[e.code], error: e.rawMessage });
    return e;
  };
  // Each request runs as its own Invoke, concurrently; what Invoke would have refused is that request's error alone.
  async function invokeMany(message: ProtoInvokeManyRequest): Promise<ProtoInvokeManyResponse> {
    if (message.requests.length === 0) {
      throw new ConnectError("shoal.v1.FunctionService.InvokeMany: invalid request: no requests to run", Code.InvalidArgument);
    }
    const results = await Promise.all(
      message.requests.map(async (request) => {
        try {
          return create(InvokeManyResultSchema, { result: { case: "response", value: await invoke(request) } });
        } catch (err) {
          const e = refused(err);
          return create(InvokeManyResultSchema, { result: { case: "error", value: { code: e.code, message: e.rawMessage } } });
        }
      }),
    );
    return create(InvokeManyResponseSchema, { results });
  }
  const routes = (router: ConnectRouter) => router.service(FunctionService, { invoke, invokeMany });
  const readMaxBytes = options.maxRequestBytes ?? defaultMaxRequestBytes;
  const authorized = bearerCheck(options.bearerToken);
  const routerOptions: ConnectRouterOptions = {
    readMaxBytes,
    interceptors: [
      (next) => async (req) => {
        try {
          return await next(req);
        } catch (err) {
          throw refused(err);
        }
      },
    ],
    requestGate: options.bearerToken === undefined ? undefined : bearerGate(authorized, logger),
  };
  return { routes, routerOptions, invoke, invokeMany, refused, authorized, readMaxBytes };
}

/** Whether an `Authorization` header value carries the token (any value when there is none to carry). */
function bearerCheck(token: string | undefined): (given: string | null | undefined) => boolean {
  if (token === undefined) return () => true;
  if (token === "") throw new Error("serveFunctions: bearerToken is empty: set a token, or leave the option out to require none");
  const expected = `Bearer ${token}`;
  return (given) => typeof given === "string" && sameText(given, expected);
}

function bearerGate(authorized: (given: string | null) => boolean, logger: Logger): NonNullable<ConnectRouterOptions["requestGate"]> {
  return (context) => {
    const given = context.requestHeader.get("authorization");
    if (authorized(given)) return;
    const what = given === null ? "no Authorization header" : "a wrong bearer token";
    logger.warn("shoal.v1.FunctionService.Invoke refused", { code: "Unauthenticated", error: what });
    throw new ConnectError(
      `shoal.v1.FunctionService: the request carries ${what}: send Authorization: Bearer <the endpoint's token> (bearerToken in the runtime's endpoint config)`,
      Code.Unauthenticated,
    );
  };
}

/** Compares in time independent of where the texts differ: a token must not leak byte by byte. */
function sameText(a: string, b: string): boolean {
  let diff = a.length ^ b.length;
  for (let i = 0; i < b.length; i++) diff |= (a.charCodeAt(i % Math.max(a.length, 1)) || 0) ^ b.charCodeAt(i);
  return diff === 0;
}

function withFields(logger: Logger, fields: Record<string, unknown>): Logger {
  return {
    debug: (m, f) => logger.debug(m, { ...fields, ...f }),
    info: (m, f) => logger.info(m, { ...fields, ...f }),
    warn: (m, f) => logger.warn(m, { ...fields, ...f }),
    error: (m, f) => logger.error(m, { ...fields, ...f }),
  };
}

/** JSON lines on stderr, as the runtime logs; console.error, which every platform with fetch has. */
function stderrLogger(): Logger {
  const write = (level: string) => (msg: string, fields?: Record<string, unknown>) =>
    console.error(JSON.stringify({ level, time: Date.now(), ...fields, msg }));
  return { debug: () => {}, info: write("info"), warn: write("warn"), error: write("error") };
}
