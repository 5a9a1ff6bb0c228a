import type { GreeterHandlers } from "./gen/greeter/v1/greeter_shoal.js";

export const greeter: GreeterHandlers = {
  greet(req, ctx) {
    ctx.state.times += 1;
    return { greeting: `Hello, ${req.name}!`, times: ctx.state.times };
  },
  count(_req, ctx) {
    return { times: ctx.state.times };
  },
};
