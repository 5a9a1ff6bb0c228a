import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Project } from "ts-morph";
import { afterAll, beforeAll, expect, it } from "vitest";
import { ImplementError, implement } from "./implement.js";

// Inside the example, so `./gen/...` and `@shoal/sdk` resolve as in a user's project.
const example = fileURLToPath(new URL("../../../examples/shopping-cart/src/", import.meta.url));
const dir = join(example, `.implement-${process.pid}`);
beforeAll(() => mkdirSync(dir, { recursive: true }));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function diagnostics(file: string): string[] {
  const project = new Project({
    compilerOptions: { strict: true, module: 199, moduleResolution: 99, target: 9, skipLibCheck: true, noEmit: true },
  });
  project.addSourceFileAtPath(file);
  project.resolveSourceFileDependencies();
  return project.getPreEmitDiagnostics().map((d) => `${d.getSourceFile()?.getBaseName()}: ${String(d.getMessageText())}`);
}

it("adds the missing handlers and keeps the code already there", async () => {
  const file = join(dir, "cart.ts");
  const original = `import type { CartHandlers } from "../gen/shop/v1/cart_shoal.js";

/** Joe's cart. */
export const cart: CartHandlers = {
  // keep me
  view(_req, ctx) {
    return { items: ctx.state.items };
  },
};
`;
  writeFileSync(file, original);
  expect(diagnostics(file).some((d) => d.includes("missing the following properties"))).toBe(true);
  const result = await implement({ file });
  expect(result).toEqual({ created: false, added: ["cart.addItem", "cart.checkout", "cart.remindAbandoned"] });
  const text = readFileSync(file, "utf8");
  expect(text).toContain("// keep me\n  view(_req, ctx) {\n    return { items: ctx.state.items };\n  },");
  expect(text).toContain('throw new ShoalError(Code.Unimplemented, "shop.v1.Cart.AddItem is not implemented yet");');
  expect(text).toMatch(/^import \{ Code, ShoalError \} from "@shoal\/sdk";$/m);
  expect(diagnostics(file)).toEqual([]);
  // A second run has nothing to add.
  expect(await implement({ file })).toEqual({ created: false, added: [] });
});

it("creates a file with every handler of a function", async () => {
  const file = join(dir, "inventory.ts");
  const result = await implement({ file, generated: join(example, "gen/shop/v1/inventory_shoal.ts") });
  expect(result).toEqual({ created: true, added: ["inventory.restock", "inventory.reserve", "inventory.level"] });
  expect(readFileSync(file, "utf8")).toContain('import type { InventoryHandlers } from "../gen/shop/v1/inventory_shoal.js";');
  expect(diagnostics(file)).toEqual([]);
});

it("says what is missing", async () => {
  await expect(implement({ file: join(dir, "nothing.ts") })).rejects.toThrow(
    new ImplementError(`${join(dir, "nothing.ts")} does not exist; pass --gen <the generated *_shoal.ts file> to create it`),
  );
  await expect(
    implement({ file: join(dir, "x.ts"), generated: join(example, "gen/shop/v1/cart_shoal.ts"), functionName: "Nope" }),
  ).rejects.toThrow("cart_shoal.ts has no handler interface for Nope (functions: Cart)");
});
