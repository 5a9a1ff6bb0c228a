// @shoal/sdk/serve: a module's functions as a remote function endpoint
// (shoal.v1.FunctionService) on Node. A subpath of its own: it needs node's
// http servers and @connectrpc/connect-node, and the rest of the SDK runs
// where no `node:` modules exist (its fetch handler is @shoal/sdk/fetch).

export type { ServeFunctionsOptions } from "../remote/function-endpoint.js";
export { defaultMaxRequestBytes, functionsFetchHandler } from "../remote/function-endpoint.js";
export type { FunctionServer, ListenFunctionsOptions } from "./listen-functions.js";
export { listenFunctions, listenOptionsFromEnv, runFunctionEndpoint } from "./listen-functions.js";
export type { FunctionEndpoint } from "./serve-functions.js";
export { serveFunctions } from "./serve-functions.js";
