import type { CounterHandlers } from "./gen/bench/v1/counter_shoal.js";

/** The Shoal counter: each key is an instance whose state is its running sum. */
export const counter: CounterHandlers = {
  add(req, ctx) {
    ctx.state.value += req.delta;
    return { value: ctx.state.value };
  },
  get(_req, ctx) {
    return { value: ctx.state.value };
  },
};
