// Layering rules of the runtime (see packages/runtime/ARCHITECTURE.md), checked by `npm run lint`.
// Lower layers never import higher ones: protocol, config, observe -> storage -> invoker -> shard -> node -> cluster -> http.
const rt = "^packages/runtime/src/";
const below = (layer, higher) => ({
  name: `${layer}-not-above`,
  comment: `${layer}/ is below ${higher.join(", ")}: it gets what it needs as arguments, not by importing them`,
  severity: "error",
  from: { path: `${rt}${layer}/` },
  to: { path: `${rt}(${higher.join("|")})/` },
});

module.exports = {
  forbidden: [
    {
      name: "no-circular",
      comment: "An import cycle ties concepts together that should stand apart",
      severity: "error",
      from: { path: "^packages/[^/]+/src/" },
      to: { circular: true },
    },
    below("protocol", ["config", "observe", "storage", "invoker", "shard", "node", "cluster", "http"]),
    below("config", ["storage", "invoker", "shard", "node", "cluster", "http"]),
    below("observe", ["storage", "invoker", "shard", "node", "cluster", "http"]),
    below("storage", ["cluster", "invoker", "shard", "node", "http"]),
    below("invoker", ["shard", "node", "cluster", "http"]),
    below("shard", ["node", "cluster", "http"]),
    below("node", ["cluster", "http"]),
    below("cluster", ["http"]),
    {
      name: "sdk-web-standard",
      comment:
        "@shoal/sdk runs where only web-standard APIs exist (Deno, Bun, Workers): no node: built-ins, but in the node servers of @shoal/sdk/serve",
      severity: "error",
      from: { path: "^packages/sdk/src/", pathNot: "\\.test\\.ts$|^packages/sdk/src/serve/" },
      to: { dependencyTypes: ["core"] },
    },
  ],
  options: {
    doNotFollow: { path: "node_modules" },
    exclude: { path: "(/dist/|/gen/|node_modules)" },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: "tsconfig.base.json" },
    enhancedResolveOptions: { exportsFields: ["exports"], conditionNames: ["import", "types", "default"], extensions: [".ts", ".js"] },
  },
};
