import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

const src = (path: string) => fileURLToPath(new URL(`./packages/${path}`, import.meta.url));

export default defineConfig({
  // Tests run the workspace packages from source; processes that tests spawn
  // run the built dist, as users do.
  resolve: {
    alias: [
      { find: /^@shoal\/sdk\/gen\/(.*)\.js$/, replacement: src("sdk/src/gen/$1.ts") },
      { find: /^@shoal\/sdk\/internal$/, replacement: src("sdk/src/internal.ts") },
      { find: /^@shoal\/sdk\/serve$/, replacement: src("sdk/src/serve/index.ts") },
      { find: /^@shoal\/sdk\/fetch$/, replacement: src("sdk/src/fetch.ts") },
      { find: /^@shoal\/sdk$/, replacement: src("sdk/src/index.ts") },
      { find: /^@shoal\/runtime\/internal$/, replacement: src("runtime/src/internal.ts") },
      { find: /^@shoal\/runtime\/storage-conformance$/, replacement: src("runtime/src/storage-conformance.ts") },
      { find: /^@shoal\/runtime$/, replacement: src("runtime/src/index.ts") },
      { find: /^@shoal\/cli$/, replacement: src("cli/src/cli.ts") },
      { find: /^@shoal\/testing$/, replacement: src("testing/src/index.ts") },
    ],
  },
  test: {
    include: ["packages/*/src/**/*.test.ts", "examples/*/src/**/*.test.ts", "test/**/*.test.ts"],
    // The long storms run with npm run test:storm (vitest.storm.config.ts); the
    // cluster tests after the rest, one file at a time (vitest.cluster.config.ts).
    exclude: ["**/node_modules/**", "**/dist/**", "test/storm/**", "test/nats-*.test.ts", "test/cluster-*.test.ts"],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // Crash and end-to-end tests start processes: keep the 2-core machine from thrashing.
    maxWorkers: 2,
  },
});
