import { Code, ShoalError } from "@shoal/sdk";
import { CartAbandonedSchema, OrderPlacedSchema } from "./gen/shop/v1/cart_pb.js";
import { CartFunction, type CartHandlers } from "./gen/shop/v1/cart_shoal.js";
import { FraudFunction } from "./gen/shop/v1/fraud_shoal.js";
import { InventoryFunction } from "./gen/shop/v1/inventory_shoal.js";

/** How long a cart may sit untouched before the abandoned-cart reminder. */
export const abandonedAfterMs = 24 * 3600_000;

export const cart: CartHandlers = {
  async addItem(req, ctx) {
    if (req.sku === "" || req.quantity <= 0) {
      throw new ShoalError(Code.InvalidArgument, "addItem needs a sku and a positive quantity");
    }
    const reservation = await ctx.call(InventoryFunction).reserve({ sku: req.sku, quantity: req.quantity });
    if (!reservation.reserved) {
      throw new ShoalError(Code.FailedPrecondition, `out of ${req.sku}: ${reservation.available} left`);
    }
    ctx.state.items[req.sku] = (ctx.state.items[req.sku] ?? 0) + req.quantity;
    // One pending reminder per cart, pushed back by every change.
    if (ctx.state.reminder !== "") ctx.cancel(ctx.state.reminder);
    ctx.state.reminder = ctx.send(CartFunction, { delay: abandonedAfterMs }).remindAbandoned({ userId: ctx.key });
    return { items: ctx.state.items };
  },

  async checkout(_req, ctx) {
    const items = { ...ctx.state.items };
    const totalQuantity = Object.values(items).reduce((sum, q) => sum + q, 0);
    if (totalQuantity === 0) throw new ShoalError(Code.FailedPrecondition, `the cart of ${ctx.key} is empty`);
    const verdict = await ctx.call(FraudFunction).check({ userId: ctx.key, totalQuantity });
    if (!verdict.approved) throw new ShoalError(Code.PermissionDenied, `checkout refused: ${verdict.reason}`);
    if (ctx.state.reminder !== "") ctx.cancel(ctx.state.reminder);
    const orderId = `order-${ctx.invocationId}`;
    ctx.egress("orders", OrderPlacedSchema, { orderId, userId: ctx.key, items });
    ctx.clearState();
    return { orderId, items };
  },

  view(_req, ctx) {
    return { items: ctx.state.items };
  },

  remindAbandoned(_req, ctx) {
    ctx.state.reminder = "";
    if (Object.keys(ctx.state.items).length > 0) {
      ctx.egress("stdout", CartAbandonedSchema, { userId: ctx.key, items: ctx.state.items });
    }
    return {};
  },
};
