import type { ConnectRouter } from "@connectrpc/connect";
import type { NodeRuntime } from "../node/runtime.js";
import { registerAdmin } from "./admin.js";
import { registerIngress } from "./ingress.js";

/**
 * The Connect routes of a node: every function service at its standard path,
 * and `shoal.v1.Admin`. Pass to `connectNodeAdapter` or `createRouterTransport`.
 */
export function shoalRoutes(runtime: NodeRuntime): (router: ConnectRouter) => void {
  return (router) => {
    registerAdmin(router, runtime);
    registerIngress(router, runtime);
  };
}
