import { defineConfig } from "vitest/config";
import base from "./vitest.config.js";

// The cluster tests (real nats-server processes, SIGKILLs of stream leaders),
// part of npm test but run after the rest, one file at a time: elections and
// JetStream timeouts are sensitive to the CPU the other files take.
export default defineConfig({
  ...base,
  test: {
    ...base.test,
    include: ["test/nats-*.test.ts", "test/cluster-*.test.ts"],
    exclude: ["**/node_modules/**", "**/dist/**"],
    maxWorkers: 1,
  },
});
