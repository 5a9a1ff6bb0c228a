import { Code, ShoalError } from "@shoal/sdk";
import type { InventoryHandlers } from "./gen/shop/v1/inventory_shoal.js";

export const inventory: InventoryHandlers = {
  restock(req, ctx) {
    if (req.quantity <= 0) throw new ShoalError(Code.InvalidArgument, "restock needs a positive quantity");
    ctx.state.available += req.quantity;
    return { sku: ctx.key, available: ctx.state.available };
  },

  reserve(req, ctx) {
    if (req.quantity <= 0) throw new ShoalError(Code.InvalidArgument, "reserve needs a positive quantity");
    if (ctx.state.available < req.quantity) return { reserved: false, available: ctx.state.available };
    ctx.state.available -= req.quantity;
    return { reserved: true, available: ctx.state.available };
  },

  level(_req, ctx) {
    return { sku: ctx.key, available: ctx.state.available };
  },
};
