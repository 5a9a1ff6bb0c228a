// The counter as a Shoal module, for the cluster kinds' `shoal-node` processes
// (src/cluster.ts): `functions: { module: bench/dist/module.js }`.
import { implement, module } from "@shoal/sdk";
import { counter } from "./counter.js";
import { CounterFunction } from "./gen/bench/v1/counter_shoal.js";

export default module(implement(CounterFunction, counter));
