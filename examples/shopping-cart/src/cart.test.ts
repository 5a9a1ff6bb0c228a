import { Code, ConnectError } from "@connectrpc/connect";
import { createTestEnv, type TestEnv } from "@shoal/testing";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { abandonedAfterMs } from "./cart.js";
import { CartFunction } from "./gen/shop/v1/cart_shoal.js";
import { InventoryFunction } from "./gen/shop/v1/inventory_shoal.js";
import shop from "./module.js";

const day = 24 * 3600_000;

describe("shopping cart", () => {
  let env: TestEnv;
  beforeEach(async () => {
    env = await createTestEnv({ functions: shop });
    await env.client(InventoryFunction).restock({ sku: "socks", quantity: 10 });
  });
  afterEach(() => env.close());

  it("reserves stock at the inventory with ctx.call and adds the item", async () => {
    const view = await env.client(CartFunction).addItem({ userId: "joe", sku: "socks", quantity: 3 });
    expect(view.items).toEqual({ socks: 3 });
    expect(env.stateOf(InventoryFunction, "socks")?.available).toBe(7);
    expect(env.stateOf(CartFunction, "joe")?.items).toEqual({ socks: 3 });
    expect(await env.client(CartFunction).view({ userId: "joe" })).toMatchObject({ items: { socks: 3 } });
  });

  it("refuses an item out of stock and changes nothing", async () => {
    const err = await env
      .client(CartFunction)
      .addItem({ userId: "joe", sku: "socks", quantity: 11 })
      .catch((e) => e);
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.FailedPrecondition);
    expect((err as ConnectError).rawMessage).toBe("out of socks: 10 left");
    expect(env.stateOf(CartFunction, "joe")).toBeUndefined();
    expect(env.stateOf(InventoryFunction, "socks")?.available).toBe(10);
  });

  it("checks out: consults fraud, emits the order, empties the cart, cancels the reminder", async () => {
    const cart = env.client(CartFunction);
    await cart.addItem({ userId: "ann", sku: "socks", quantity: 2 });
    const result = await cart.checkout({ userId: "ann" });
    expect(result.items).toEqual({ socks: 2 });
    expect(result.orderId).toMatch(/^order-/);
    expect(env.stateOf(CartFunction, "ann")).toBeUndefined();
    await env.settled();
    expect(env.egressed("orders").map((m) => m.message)).toMatchObject([{ orderId: result.orderId, userId: "ann", items: { socks: 2 } }]);
    await env.clock.advance(abandonedAfterMs + 1000);
    await env.settled();
    expect(env.egressed("stdout")).toEqual([]);
  });

  it("refuses a suspicious checkout and keeps the cart", async () => {
    await env.client(InventoryFunction).restock({ sku: "socks", quantity: 200 });
    const cart = env.client(CartFunction);
    await cart.addItem({ userId: "eve", sku: "socks", quantity: 150 });
    const err = await cart.checkout({ userId: "eve" }).catch((e) => e);
    expect((err as ConnectError).code).toBe(Code.PermissionDenied);
    expect((err as ConnectError).rawMessage).toContain("150 items in one order");
    expect(env.stateOf(CartFunction, "eve")?.items).toEqual({ socks: 150 });
  });

  it("reminds about an abandoned cart once, a day after the last change", async () => {
    const cart = env.client(CartFunction);
    await cart.addItem({ userId: "bob", sku: "socks", quantity: 1 });
    await env.clock.advance(day / 2);
    await cart.addItem({ userId: "bob", sku: "socks", quantity: 1 });
    await env.clock.advance(day / 2 + 1000);
    await env.settled();
    expect(env.egressed("stdout")).toEqual([]);
    await env.clock.advance(day / 2);
    await env.settled();
    expect(env.egressed("stdout").map((m) => m.message)).toMatchObject([{ userId: "bob", items: { socks: 2 } }]);
    expect(env.stateOf(CartFunction, "bob")?.reminder).toBe("");
    await env.clock.advance(3 * day);
    await env.settled();
    expect(env.egressed("stdout")).toHaveLength(1);
  });

  it("clears a cart's state 30 days after its last write (state_ttl)", async () => {
    await env.client(CartFunction).addItem({ userId: "zoe", sku: "socks", quantity: 1 });
    await env.clock.advance(29 * day);
    await env.settled();
    expect(env.stateOf(CartFunction, "zoe")).toBeDefined();
    await env.clock.advance(2 * day);
    await env.settled();
    expect(env.stateOf(CartFunction, "zoe")).toBeUndefined();
  });

  it("answers InvalidArgument for an empty key, naming the field", async () => {
    const err = await env
      .client(CartFunction)
      .addItem({ userId: "", sku: "socks", quantity: 1 })
      .catch((e) => e);
    expect((err as ConnectError).code).toBe(Code.InvalidArgument);
    expect((err as ConnectError).rawMessage).toContain("shop.v1.AddItemRequest.user_id");
  });
});
