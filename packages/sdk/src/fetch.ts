// @shoal/sdk/fetch: a module's functions as a remote function endpoint
// (shoal.v1.FunctionService) behind a fetch handler, in web-standard code for
// Deno, Bun and Workers. On Node, @shoal/sdk/serve has the servers too.

export type { ServeFunctionsOptions } from "./remote/function-endpoint.js";
export { defaultMaxRequestBytes, functionsFetchHandler } from "./remote/function-endpoint.js";
