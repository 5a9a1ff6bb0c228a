import { implement, module } from "@shoal/sdk";
import { cart } from "./cart.js";
import { fraud } from "./fraud.js";
import { CartFunction } from "./gen/shop/v1/cart_shoal.js";
import { FraudFunction } from "./gen/shop/v1/fraud_shoal.js";
import { InventoryFunction } from "./gen/shop/v1/inventory_shoal.js";
import { inventory } from "./inventory.js";

/** The shopping-cart functions, for `shoal dev src/module.ts`. */
export default module(implement(CartFunction, cart), implement(InventoryFunction, inventory), implement(FraudFunction, fraud));
