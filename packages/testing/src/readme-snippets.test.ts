// Compiles every ```ts block of the packages' READMEs, as if each were a file
// in examples/shopping-cart/src (so `./gen/shop/v1/cart_shoal.js`,
// `./cart.js` and `./module.js` resolve), against the built packages (run
// `npm run build` first). A snippet that no longer compiles fails here with
// the diagnostic a reader would get.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTypecheckProject, repoRoot, type TypecheckProject } from "./typecheck.test-util.js";

const readmes = ["sdk", "runtime", "testing"] as const;

/** The ```ts blocks of a package's README. */
function snippetsOf(pkg: string): string[] {
  const readme = readFileSync(join(repoRoot, "packages", pkg, "README.md"), "utf8");
  return [...readme.matchAll(/^```ts\n([\s\S]*?)^```$/gm)].map((match) => match[1] ?? "");
}

const files: Record<string, string> = {};
for (const pkg of readmes) {
  snippetsOf(pkg).forEach((snippet, i) => {
    files[`readme-${pkg}-${i + 1}.ts`] = snippet;
  });
}

let project: TypecheckProject;
beforeAll(() => {
  project = createTypecheckProject(files);
});
afterAll(() => project?.remove());

describe("README snippets compile", () => {
  for (const pkg of readmes) {
    it(`packages/${pkg}/README.md`, () => {
      const names = Object.keys(files).filter((name) => name.startsWith(`readme-${pkg}-`));
      expect(names.length).toBeGreaterThan(0);
      expect(names.flatMap((name) => project.diagnosticsOf(name))).toEqual([]);
    });
  }

  it("a snippet with a mistake does not compile (the check is live)", () => {
    const broken = createTypecheckProject({
      "broken.ts":
        'import { runHandler } from "@shoal/testing";\nimport { cart } from "./cart.js";\nimport { CartFunction } from "./gen/shop/v1/cart_shoal.js";\nawait runHandler(CartFunction, cart, "addItems", { userId: "joe" });\n',
    });
    try {
      expect(broken.diagnosticsOf("broken.ts")).toEqual([
        expect.stringMatching(/^broken\.ts:4: Argument of type '"addItems"' is not assignable/),
      ]);
    } finally {
      broken.remove();
    }
  });
});
