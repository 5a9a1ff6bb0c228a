// The storage conformance suite is exported as @shoal/runtime/storage-conformance
// for backends in other packages.
import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { createMemoryStorage } from "@shoal/runtime";
import { describeShardStorageConformance } from "@shoal/runtime/storage-conformance";
import { expect, it } from "vitest";

describeShardStorageConformance(
  "memory, imported by package name",
  async () => ({
    storage: createMemoryStorage(),
    async cleanup() {},
  }),
  { survivesRestart: false },
);

it("runs against the built @shoal/runtime in a package of its own (npm run build first)", { timeout: 60_000 }, () => {
  const fixture = fileURLToPath(new URL("../fixtures/storage-backend/", import.meta.url));
  const vitest = fileURLToPath(new URL("../../../node_modules/vitest/vitest.mjs", import.meta.url));
  let output: string;
  try {
    output = execFileSync(process.execPath, [vitest, "run", "--root", fixture, "--config", `${fixture}vitest.config.ts`], {
      cwd: fixture,
      encoding: "utf8",
      env: { ...process.env, NO_COLOR: "1", CI: "1" },
    });
  } catch (err) {
    const { stdout, stderr } = err as { stdout?: string; stderr?: string };
    throw new Error(`the fixture's vitest run failed:\n${stdout ?? ""}\n${stderr ?? ""}`);
  }
  expect(output).toContain("backend.test.ts");
  expect(output).toMatch(/Tests\s+\d+ passed/);
  expect(output).not.toMatch(/failed|skipped/);
});
