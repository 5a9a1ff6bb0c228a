import type { ConnectRouter } from "@connectrpc/connect";
import { shoalRoutes } from "./http/routes.js";
import { createNodeRuntime, type NodeRuntime, type RuntimeOptions } from "./node/runtime.js";

/** A running Shoal node with its Connect routes. */
export interface Runtime extends NodeRuntime {
  /**
   * Connect routes serving every function service at its standard path, and
   * `shoal.v1.Admin`; pass to `connectNodeAdapter` or `createRouterTransport`.
   */
  readonly routes: (router: ConnectRouter) => void;
}

/**
 * Creates a node. Call `start()` before serving. The node's core (the node
 * layer) knows nothing of HTTP; its routes come from the http layer here, at
 * the composition root, so neither layer imports the other back.
 */
export function createRuntime(options: RuntimeOptions): Runtime {
  const node = createNodeRuntime(options);
  return Object.assign(node, { routes: shoalRoutes(node) });
}
