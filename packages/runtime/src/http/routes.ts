import type { ConnectRouter } from "@connectrpc/connect";
import type { ConnectUnaryRoute } from "@shoal/sdk/internal";
import type { ClusterStatusReader } from "../cluster/cluster-status.js";
import type { NodeRuntime } from "../node/runtime.js";
import { registerAdmin } from "./admin.js";
import { ingressRoutes, registerIngress } from "./ingress.js";

/**
 * The Connect routes of a node: every function service at its standard path,
 * and `shoal.v1.Admin` (whose status lists the cluster's nodes when given
 * `clusterStatus`). Pass to `connectNodeAdapter` or `createRouterTransport`.
 * The function routes are `ingress` (default: `ingressRoutes(runtime)`).
 */
export function shoalRoutes(
  runtime: NodeRuntime,
  clusterStatus?: ClusterStatusReader,
  ingress: readonly ConnectUnaryRoute[] = ingressRoutes(runtime),
): (router: ConnectRouter) => void {
  return (router) => {
    registerAdmin(router, runtime, clusterStatus);
    registerIngress(router, runtime, ingress);
  };
}
