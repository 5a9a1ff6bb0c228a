import { defineConfig } from "vitest/config";
import base from "./vitest.config.js";

// npm run test:storm: the long fault storms of test/storm, one at a time.
export default defineConfig({
  ...base,
  test: {
    ...base.test,
    include: ["test/storm/**/*.storm.test.ts"],
    exclude: ["**/node_modules/**", "**/dist/**"],
    maxWorkers: 1,
  },
});
