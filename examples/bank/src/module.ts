import { implement, module } from "@shoal/sdk";
import { account } from "./account.js";
import { AccountFunction } from "./gen/bank/v1/account_shoal.js";

/** The bank, for `shoal dev src/module.ts`. */
export default module(implement(AccountFunction, account));
