import type { FraudHandlers } from "./gen/shop/v1/fraud_shoal.js";

/** Orders above this many items are refused. */
export const maxItemsPerOrder = 100;

export const fraud: FraudHandlers = {
  check(req) {
    if (req.totalQuantity > maxItemsPerOrder) {
      return { approved: false, reason: `${req.totalQuantity} items in one order (the limit is ${maxItemsPerOrder})` };
    }
    return { approved: true };
  },
};
