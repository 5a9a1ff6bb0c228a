// @shoal/runtime is what a serving node (a container) installs: its
// production dependencies are what serving needs, and the development tooling
// of the `shoal` command (commander, ts-morph, tsx) lives in @shoal/cli.
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const packageDir = fileURLToPath(new URL("..", import.meta.url));
const manifest = JSON.parse(readFileSync(join(packageDir, "package.json"), "utf8")) as {
  dependencies: Record<string, string>;
  peerDependencies: Record<string, string>;
  bin: Record<string, string>;
};

/** The packages the runtime's shipped sources import (tests and the conformance suite left out). */
function importedPackages(): Set<string> {
  const packages = new Set<string>();
  const files = (readdirSync(join(packageDir, "src"), { recursive: true }) as string[]).filter(
    (f) => f.endsWith(".ts") && !f.endsWith(".test.ts") && !f.endsWith(".conformance.ts"),
  );
  for (const file of files) {
    const text = readFileSync(join(packageDir, "src", file), "utf8");
    for (const [, specifier] of text.matchAll(/(?:from|import\()\s*"([^"]+)"/g)) {
      if (specifier === undefined || specifier.startsWith(".") || specifier.startsWith("node:")) continue;
      const parts = specifier.split("/");
      packages.add(specifier.startsWith("@") ? `${parts[0]}/${parts[1]}` : (parts[0] as string));
    }
  }
  return packages;
}

describe("@shoal/runtime's package", () => {
  it("depends on what a serving node needs, not on the CLI's tooling", () => {
    expect(Object.keys(manifest.dependencies).sort()).toEqual([
      "@connectrpc/connect-node",
      "@nats-io/jetstream",
      "@nats-io/kv",
      "@nats-io/obj",
      "@nats-io/transport-node",
      "@shoal/sdk",
      "fs-ext",
      "lmdb",
      "pino",
      "prom-client",
      "yaml",
    ]);
    for (const tool of ["commander", "ts-morph", "tsx"]) expect(manifest.dependencies).not.toHaveProperty(tool);
  });

  it("declares every package its sources import", () => {
    const declared = new Set([...Object.keys(manifest.dependencies), ...Object.keys(manifest.peerDependencies)]);
    expect([...importedPackages()].filter((p) => !declared.has(p))).toEqual([]);
  });

  it("ships shoal-node, not shoal (that is @shoal/cli's)", () => {
    expect(manifest.bin).toEqual({ "shoal-node": "bin/shoal-node.js" });
  });
});
