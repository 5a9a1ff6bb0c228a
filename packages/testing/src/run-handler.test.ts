import { Code, ShoalError } from "@shoal/sdk";
import { formatToken } from "@shoal/sdk/internal";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { abandonedAfterMs, cart } from "../../../examples/shopping-cart/src/cart.js";
import { fraud } from "../../../examples/shopping-cart/src/fraud.js";
import { CartFunction, type CartHandlers } from "../../../examples/shopping-cart/src/gen/shop/v1/cart_shoal.js";
import { FraudFunction } from "../../../examples/shopping-cart/src/gen/shop/v1/fraud_shoal.js";
import { InventoryFunction } from "../../../examples/shopping-cart/src/gen/shop/v1/inventory_shoal.js";
import { inventory } from "../../../examples/shopping-cart/src/inventory.js";
import { cannedReplies, runHandler } from "./run-handler.js";
import { createTypecheckProject, type TypecheckProject } from "./typecheck.test-util.js";

const day = 24 * 3600_000;
const oldReminder = formatToken({ target: { type: "shop.v1.Cart", key: "joe" }, messageId: "earlier:s0" });

describe("runHandler on the shopping cart", () => {
  it("addItem with a canned Reserve reply writes state, re-arms the reminder and cancels the previous one", async () => {
    const result = await runHandler(
      CartFunction,
      cart,
      "addItem",
      { userId: "joe", sku: "socks", quantity: 2 },
      {
        state: { items: { hats: 1 }, reminder: oldReminder },
        calls: {
          "shop.v1.Inventory.Reserve": (req) => ({ reserved: true, available: 10 - Number(req.quantity) }),
        },
      },
    );
    expect(result.error).toBeUndefined();
    expect(result.thrown).toBeUndefined();
    expect(result.reply?.items).toEqual({ hats: 1, socks: 2 });
    expect(result.stateChange).toBe("write");
    expect(result.calls).toMatchObject([
      {
        callId: "test-invocation/0",
        target: { type: "shop.v1.Inventory", key: "socks" },
        handler: "Reserve",
        request: { $typeName: "shop.v1.ReserveRequest", sku: "socks", quantity: 2 },
      },
    ]);
    expect(result.sends).toHaveLength(1);
    const [reminder] = result.sends;
    expect(reminder).toMatchObject({
      target: { type: "shop.v1.Cart", key: "joe" },
      handler: "RemindAbandoned",
      request: { $typeName: "shop.v1.RemindAbandonedRequest", userId: "joe" },
      delayMs: day,
    });
    expect(abandonedAfterMs).toBe(day);
    expect(result.cancels).toEqual([oldReminder]);
    // the state keeps the new reminder's token, the one ctx.send returned
    expect(result.state?.items).toEqual({ hats: 1, socks: 2 });
    expect(result.state?.reminder).toBe(reminder?.token);
    expect(reminder?.token).not.toBe(oldReminder);
    expect(result.egress).toEqual([]);
  });

  it("addItem on a new cart cancels nothing", async () => {
    const result = await runHandler(
      CartFunction,
      cart,
      "addItem",
      { userId: "ann", sku: "hat", quantity: 1 },
      {
        calls: { "shop.v1.Inventory.Reserve": { reserved: true, available: 0 } },
      },
    );
    expect(result.reply?.items).toEqual({ hat: 1 });
    expect(result.state?.items).toEqual({ hat: 1 });
    expect(result.cancels).toEqual([]);
    expect(result.sends.map((s) => s.target)).toEqual([{ type: "shop.v1.Cart", key: "ann" }]);
  });

  it("addItem with reserved: false fails with FailedPrecondition and changes nothing", async () => {
    const result = await runHandler(
      CartFunction,
      cart,
      "addItem",
      { userId: "joe", sku: "socks", quantity: 5 },
      {
        state: { items: { hats: 1 }, reminder: oldReminder },
        calls: cannedReplies(InventoryFunction, { reserve: { reserved: false, available: 3 } }),
      },
    );
    expect(result.reply).toBeUndefined();
    expect(result.error).toBeInstanceOf(ShoalError);
    expect(result.error?.code).toBe(Code.FailedPrecondition);
    expect(result.error?.message).toBe("out of socks: 3 left");
    expect(result.stateChange).toBe("keep");
    expect(result.state?.items).toEqual({ hats: 1 });
    expect(result.state?.reminder).toBe(oldReminder);
    // the call was made; the effects after it were discarded
    expect(result.calls).toHaveLength(1);
    expect(result.sends).toEqual([]);
    expect(result.cancels).toEqual([]);
  });

  it("a ShoalError from a canned reply reaches the handler as the call's error", async () => {
    const thrown = await runHandler(
      CartFunction,
      cart,
      "addItem",
      { userId: "joe", sku: "socks", quantity: 1 },
      {
        calls: {
          "shop.v1.Inventory.Reserve": () => {
            throw new ShoalError(Code.ResourceExhausted, "inventory busy");
          },
        },
      },
    );
    expect(thrown.error?.code).toBe(Code.ResourceExhausted);
    expect(thrown.error?.message).toBe("inventory busy");
    expect(thrown.state).toBeUndefined();

    const returned = await runHandler(
      CartFunction,
      cart,
      "addItem",
      { userId: "joe", sku: "socks", quantity: 1 },
      {
        calls: { "shop.v1.Inventory.Reserve": new ShoalError(Code.NotFound, "no such sku") },
      },
    );
    expect(returned.error?.code).toBe(Code.NotFound);

    // anything else thrown by a canned reply is the callee failing for good: Internal
    const broken = await runHandler(
      CartFunction,
      cart,
      "addItem",
      { userId: "joe", sku: "socks", quantity: 1 },
      {
        calls: {
          "shop.v1.Inventory.Reserve": async () => {
            throw new Error("disk on fire");
          },
        },
      },
    );
    expect(broken.error?.code).toBe(Code.Internal);
    expect(broken.error?.message).toBe("disk on fire");
  });

  it("a handler can catch a failed call and carry on", async () => {
    const tolerant: CartHandlers = {
      ...cart,
      async addItem(req, ctx) {
        try {
          await ctx.call(InventoryFunction).reserve({ sku: req.sku, quantity: req.quantity });
        } catch (err) {
          ctx.log.warn("reserve failed", { code: ShoalError.from(err).code });
          return { items: ctx.state.items };
        }
        return { items: { [req.sku]: req.quantity } };
      },
    };
    const result = await runHandler(
      CartFunction,
      tolerant,
      "addItem",
      { userId: "joe", sku: "socks", quantity: 1 },
      {
        calls: { "shop.v1.Inventory.Reserve": new ShoalError(Code.Unavailable, "down") },
      },
    );
    expect(result.reply?.items).toEqual({});
    expect(result.logs).toEqual([{ level: "warn", message: "reserve failed", fields: { code: Code.Unavailable } }]);
  });

  it("checkout with a refusing fraud reply fails with PermissionDenied and keeps the cart", async () => {
    const result = await runHandler(
      CartFunction,
      cart,
      "checkout",
      { userId: "eve" },
      {
        state: { items: { socks: 150 }, reminder: oldReminder },
        calls: cannedReplies(FraudFunction, {
          check: (req) => ({ approved: req.totalQuantity <= 100, reason: `${req.totalQuantity} is too many` }),
        }),
      },
    );
    expect(result.error?.code).toBe(Code.PermissionDenied);
    expect(result.error?.message).toBe("checkout refused: 150 is too many");
    expect(result.calls).toMatchObject([
      { target: { type: "shop.v1.Fraud", key: "" }, handler: "Check", request: { userId: "eve", totalQuantity: 150 } },
    ]);
    expect(result.stateChange).toBe("keep");
    expect(result.state?.items).toEqual({ socks: 150 });
    expect(result.egress).toEqual([]);
    expect(result.cancels).toEqual([]);
  });

  it("checkout approved: emits the order, cancels the reminder and clears the state", async () => {
    const result = await runHandler(
      CartFunction,
      cart,
      "checkout",
      { userId: "ann" },
      {
        state: { items: { socks: 2 }, reminder: oldReminder },
        invocationId: "inv-7",
        calls: { "shop.v1.Fraud.Check": { approved: true } },
      },
    );
    expect(result.reply).toMatchObject({ orderId: "order-inv-7", items: { socks: 2 } });
    expect(result.stateChange).toBe("clear");
    expect(result.state).toBeUndefined();
    expect(result.cancels).toEqual([oldReminder]);
    expect(result.egress).toMatchObject([
      {
        name: "orders",
        id: "inv-7:e0",
        message: { $typeName: "shop.v1.OrderPlaced", orderId: "order-inv-7", userId: "ann", items: { socks: 2 } },
      },
    ]);
  });

  it("view on a shared handler reads the state and never writes it", async () => {
    const result = await runHandler(CartFunction, cart, "view", { userId: "joe" }, { state: { items: { socks: 3 } } });
    expect(result.reply?.items).toEqual({ socks: 3 });
    expect(result.stateChange).toBe("keep");
    expect(result.state?.items).toEqual({ socks: 3 });

    const fresh = await runHandler(CartFunction, cart, "view", { userId: "nobody" });
    expect(fresh.reply?.items).toEqual({});
    expect(fresh.state).toBeUndefined();
  });

  it("remindAbandoned emits to stdout and forgets the reminder", async () => {
    const result = await runHandler(
      CartFunction,
      cart,
      "remindAbandoned",
      { userId: "bob" },
      {
        state: { items: { socks: 2 }, reminder: "t" },
      },
    );
    expect(result.state).toMatchObject({ items: { socks: 2 }, reminder: "" });
    expect(result.egress).toMatchObject([
      { name: "stdout", message: { $typeName: "shop.v1.CartAbandoned", userId: "bob", items: { socks: 2 } } },
    ]);
  });

  it("returns what a handler threw other than a ShoalError as thrown, without retrying", async () => {
    let runs = 0;
    const flaky: CartHandlers = {
      ...cart,
      addItem(_req, ctx) {
        runs++;
        ctx.state.items.socks = 1;
        ctx.send(CartFunction, { delay: 1000 }).remindAbandoned({ userId: ctx.key });
        throw new TypeError("cannot read properties of undefined");
      },
    };
    const result = await runHandler(
      CartFunction,
      flaky,
      "addItem",
      { userId: "joe", sku: "socks", quantity: 1 },
      {
        state: { items: { hats: 1 } },
      },
    );
    expect(runs).toBe(1);
    expect(result.thrown).toBeInstanceOf(TypeError);
    expect((result.thrown as Error).message).toBe("cannot read properties of undefined");
    expect(result.error).toBeUndefined();
    expect(result.reply).toBeUndefined();
    expect(result.stateChange).toBe("keep");
    expect(result.state?.items).toEqual({ hats: 1 });
    expect(result.sends).toEqual([]);
  });

  it("answers InvalidArgument from the handler's own validation without calling anything", async () => {
    const result = await runHandler(CartFunction, cart, "addItem", { userId: "joe", sku: "", quantity: 1 });
    expect(result.error?.code).toBe(Code.InvalidArgument);
    expect(result.calls).toEqual([]);
  });

  it("gives the handler its key, caller and invocation id", async () => {
    let seen: unknown;
    const probe: CartHandlers = {
      ...cart,
      view(_req, ctx) {
        seen = { key: ctx.key, self: ctx.self, caller: ctx.caller, invocationId: ctx.invocationId };
        return {};
      },
    };
    await runHandler(CartFunction, probe, "view", { userId: "joe" });
    expect(seen).toEqual({ key: "joe", self: { type: "shop.v1.Cart", key: "joe" }, caller: undefined, invocationId: "test-invocation" });
    const caller = { type: "shop.v1.Checkout", key: "c1" };
    await runHandler(CartFunction, probe, "view", { userId: "" }, { key: "ann", caller, invocationId: "abc" });
    expect(seen).toEqual({ key: "ann", self: { type: "shop.v1.Cart", key: "ann" }, caller, invocationId: "abc" });
  });

  it("runs the other example functions: state of a stateful one, none of a stateless one", async () => {
    const reserve = await runHandler(InventoryFunction, inventory, "reserve", { sku: "socks", quantity: 2 }, { state: { available: 5 } });
    expect(reserve.reply).toMatchObject({ reserved: true, available: 3 });
    expect(reserve.state?.available).toBe(3);
    expect(reserve.stateChange).toBe("write");

    const check = await runHandler(FraudFunction, fraud, "check", { userId: "joe", totalQuantity: 101 });
    expect(check.reply).toMatchObject({ approved: false });
    expect(check.state).toBeUndefined();
    expect(check.stateChange).toBe("keep");
  });

  it("reports a call without a canned reply, naming it", async () => {
    await expect(
      runHandler(
        CartFunction,
        cart,
        "addItem",
        { userId: "joe", sku: "socks", quantity: 1 },
        {
          calls: { "shop.v1.Fraud.Check": { approved: true } },
        },
      ),
    ).rejects.toThrow(
      "runHandler: shop.v1.Cart.AddItem called shop.v1.Inventory.Reserve without a canned reply; add it to options.calls (given: shop.v1.Fraud.Check)",
    );
  });

  it("reports a canned reply of the wrong type", async () => {
    await expect(
      runHandler(
        CartFunction,
        cart,
        "addItem",
        { userId: "joe", sku: "socks", quantity: 1 },
        {
          calls: { "shop.v1.Inventory.Reserve": { reserved: "yes" } },
        },
      ),
    ).rejects.toThrow(
      'runHandler: the canned reply for shop.v1.Inventory.Reserve is not a shop.v1.ReserveResult: field reserved: expected a boolean, got "yes"',
    );
    await expect(
      runHandler(
        CartFunction,
        cart,
        "addItem",
        { userId: "joe", sku: "socks", quantity: 1 },
        {
          calls: { "shop.v1.Inventory.Reserve": () => ({ reservd: true }) },
        },
      ),
    ).rejects.toThrow("is not a shop.v1.ReserveResult: it has no field reservd (fields: reserved, available)");
  });

  it("refuses a keyed request with an empty key, and state for a stateless function", async () => {
    await expect(runHandler(CartFunction, cart, "view", { userId: "" })).rejects.toThrow(
      "runHandler: shop.v1.Cart.View: the request's key field user_id is empty; set it or pass options.key",
    );
    await expect(
      // @ts-expect-error a stateless function has no state
      runHandler(FraudFunction, fraud, "check", { userId: "joe" }, { state: {} }),
    ).rejects.toThrow("runHandler: shop.v1.Fraud is stateless; options.state does not apply");
  });

  it("names the handlers when given an unknown one", async () => {
    // @ts-expect-error not a handler of the cart
    await expect(runHandler(CartFunction, cart, "remove", {})).rejects.toThrow(
      "shop.v1.Cart has no handler remove (it has: addItem, checkout, view, remindAbandoned)",
    );
  });
});

describe("runHandler's types", () => {
  const imports = `
import { Code, ShoalError } from "@shoal/sdk";
import { cannedReplies, runHandler } from "@shoal/testing";
import { cart } from "./cart.js";
import { CartFunction } from "./gen/shop/v1/cart_shoal.js";
import { FraudFunction } from "./gen/shop/v1/fraud_shoal.js";
import { InventoryFunction } from "./gen/shop/v1/inventory_shoal.js";
import { inventory } from "./inventory.js";
import { fraud } from "./fraud.js";
`;
  const sources: Record<string, string> = {
    "correct.ts": `${imports}
export async function f() {
  const added = await runHandler(CartFunction, cart, "addItem", { userId: "joe", sku: "socks", quantity: 1 }, {
    state: { items: { hats: 1 } },
    calls: {
      "shop.v1.Inventory.Reserve": { reserved: true },
      "shop.v1.Fraud.Check": () => new ShoalError(Code.Unavailable, "down"),
      ...cannedReplies(InventoryFunction, { reserve: (req) => ({ reserved: req.quantity < 3, available: 1 }) }),
    },
  });
  const items: { [sku: string]: number } | undefined = added.reply?.items;
  const reminder: string | undefined = added.state?.reminder;
  const change: "keep" | "write" | "clear" = added.stateChange;
  const code: Code | undefined = added.error?.code;
  const out = await runHandler(CartFunction, cart, "checkout", { userId: "joe" });
  const orderId: string | undefined = out.reply?.orderId;
  const level = await runHandler(InventoryFunction, inventory, "level", { sku: "socks" }, { state: { available: 1 } });
  const available: number | undefined = level.state?.available;
  const verdict = await runHandler(FraudFunction, fraud, "check", { userId: "joe" });
  const none: undefined = verdict.state;
  return [items, reminder, change, code, orderId, available, none, added.sends[0]?.delayMs, added.egress[0]?.message.$typeName];
}
`,
    "unknown-handler.ts": `${imports}
export const r = runHandler(CartFunction, cart, "remove", { userId: "joe" }); // error here
`,
    "wrong-request.ts": `${imports}
export const r = runHandler(CartFunction, cart, "addItem", { userId: "joe", quantity: "2" }); // error here
`,
    "request-of-another-handler.ts": `${imports}
export const r = runHandler(CartFunction, cart, "view", { userId: "joe", sku: "socks" }); // error here
`,
    "wrong-handlers.ts": `${imports}
export const r = runHandler(CartFunction, inventory, "view", { userId: "joe" }); // error here
`,
    "wrong-reply.ts": `${imports}
export async function f() {
  const r = await runHandler(CartFunction, cart, "addItem", { userId: "joe" });
  return r.reply?.orderId; // error here
}
`,
    "wrong-state.ts": `${imports}
export const r = runHandler(CartFunction, cart, "view", { userId: "joe" }, { state: { available: 1 } }); // error here
`,
    "wrong-canned-reply.ts": `${imports}
export const calls = cannedReplies(InventoryFunction, { reserve: { reserved: "yes" } }); // error here
`,
    "wrong-canned-handler.ts": `${imports}
export const calls = cannedReplies(InventoryFunction, { check: { approved: true } }); // error here
`,
  };

  let project: TypecheckProject;
  beforeAll(() => {
    project = createTypecheckProject(sources);
  });
  afterAll(() => project?.remove());

  it("accepts correct use and infers the reply and state types", () => {
    expect(project.diagnosticsOf("correct.ts")).toEqual([]);
  });

  const cases: [file: string, message: RegExp][] = [
    [
      "unknown-handler.ts",
      /Argument of type '"remove"' is not assignable to parameter of type '"addItem" \| "checkout" \| "view" \| "remindAbandoned"'/,
    ],
    ["wrong-request.ts", /Type 'string' is not assignable to type 'number'/],
    ["request-of-another-handler.ts", /'sku' does not exist/],
    ["wrong-handlers.ts", /Argument of type 'InventoryHandlers' is not assignable to parameter of type 'CartHandlers'/],
    ["wrong-reply.ts", /Property 'orderId' does not exist on type 'CartView'/],
    ["wrong-state.ts", /'available' does not exist/],
    ["wrong-canned-reply.ts", /Type 'string' is not assignable to type 'boolean \| undefined'/],
    ["wrong-canned-handler.ts", /'check' does not exist/],
  ];
  for (const [file, message] of cases) {
    it(file.replace(/\.ts$/, ""), () => {
      const line = (sources[file] ?? "").split("\n").findIndex((text) => text.endsWith("// error here")) + 1;
      expect(line).toBeGreaterThan(0);
      const diagnostics = project.diagnosticsOf(file);
      expect(diagnostics).toHaveLength(1);
      expect(diagnostics[0]).toMatch(new RegExp(`^${file.replace(".", "\\.")}:${line}: (.|\\n)*${message.source}`));
    });
  }
});
