import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { ShoalModule } from "../module.js";
import { functionRoutes, functionsFetchHandler, type ServeFunctionsOptions } from "../remote/function-endpoint.js";
import { withInvokeFastPath } from "./invoke-fast-path.js";

/** A function endpoint: `shoal.v1.FunctionService` for a module, for node servers and for fetch-based platforms. */
export interface FunctionEndpoint {
  /**
   * A request listener for `node:http`, `node:https`, `node:http2`
   * (`createServer` or `createSecureServer`). The runtime's own requests
   * (binary, uncompressed) are answered without connect-node's per-call
   * machinery; every other request (JSON, GET, compression, a refused
   * token) is connect-node's, with the same answers.
   *
   * @example
   * http2.createServer(serveFunctions(functions).node).listen(9080);
   */
  readonly node: ReturnType<typeof connectNodeAdapter>;
  /**
   * A fetch handler (`functionsFetchHandler`): answers
   * `/shoal.v1.FunctionService/Invoke` and 404 for any other path.
   */
  fetch(request: Request): Promise<Response>;
}

/**
 * Serves a module's functions as a remote function endpoint
 * (`shoal.v1.FunctionService`) on Node: the runtime sends an instance's state
 * and a batch of its messages, the endpoint runs the handlers with the same
 * invocation model as embedded mode and answers what to commit. It keeps no
 * state of its own, so it scales and restarts freely.
 *
 * A request for a function type or handler the module lacks runs to an
 * Unimplemented reply, as in embedded mode. A request of another protocol
 * version is refused with FailedPrecondition naming both versions. Where no
 * `node:` modules exist (Deno, Bun, Workers), use `functionsFetchHandler`
 * from `@shoal/sdk/fetch`.
 *
 * @example
 * import { serveFunctions } from "@shoal/sdk/serve";
 * import functions from "./module.js";
 * http2.createServer(serveFunctions(functions, { bearerToken: process.env.SHOAL_BEARER_TOKEN }).node).listen(9080);
 */
export function serveFunctions(module: ShoalModule, options: ServeFunctionsOptions = {}): FunctionEndpoint {
  const endpoint = functionRoutes(module, options);
  const { routes, routerOptions } = endpoint;
  return {
    node: withInvokeFastPath(endpoint, connectNodeAdapter({ ...routerOptions, routes })),
    fetch: functionsFetchHandler(module, options),
  };
}
