import { implement, module } from "@shoal/sdk";
import { GreeterFunction } from "./gen/greeter/v1/greeter_shoal.js";
import { greeter } from "./greeter.js";

/** The greeter, for `shoal dev src/module.ts`. */
export default module(implement(GreeterFunction, greeter));
