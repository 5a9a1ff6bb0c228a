// createNodeRuntime refuses options it cannot run with, naming them, and
// uses the ones it is given.
import { createRouterTransport } from "@connectrpc/connect";
import { createFunctionClient, implement } from "@shoal/sdk";
import { pino } from "pino";
import { describe, expect, it } from "vitest";
import { GreeterFunction } from "../../../../examples/greeter/src/gen/greeter/v1/greeter_shoal.js";
import { greeter } from "../../../../examples/greeter/src/greeter.js";
import { createRuntime } from "../runtime.js";
import { createMemoryStorage } from "../storage/memory/memory-storage.js";
import { createNodeRuntime } from "./runtime.js";

describe("createNodeRuntime", () => {
  it.each([
    ["instanceCacheSize", 0],
    ["instanceCacheSize", 1.5],
    ["instanceIdleMs", -1],
    ["callResendMs", 0],
  ] as const)("refuses %s %d", (name, value) => {
    expect(() => createNodeRuntime({ functions: [], storage: createMemoryStorage(), logger: "silent", [name]: value })).toThrow(
      `${name} must be a positive integer, got ${value}`,
    );
  });

  it("sends a call again once callResendMs passed without its result, and the callee runs it once", async () => {
    const lines: string[] = [];
    let runs = 0;
    const runtime = createRuntime({
      functions: [
        implement(GreeterFunction, {
          ...greeter,
          async greet(req, ctx) {
            if (req.name !== "caller") return greeter.greet(req, ctx);
            const counted = await ctx.call(GreeterFunction).count({ name: "slow" });
            return { greeting: "counted", times: counted.times };
          },
          async count(req, ctx) {
            runs++;
            // Longer than callResendMs, whatever the machine: the caller's wait ends first.
            await new Promise((resolve) => setTimeout(resolve, 1_000));
            return greeter.count(req, ctx);
          },
        }),
      ],
      storage: createMemoryStorage(),
      shards: 2,
      callResendMs: 100,
      logger: pino({ level: "warn" }, { write: (line: string) => void lines.push(line) }),
    });
    await runtime.start();
    try {
      const client = createFunctionClient(GreeterFunction, createRouterTransport(runtime.routes));
      expect(await client.greet({ name: "caller" })).toEqual(expect.objectContaining({ greeting: "counted" }));
      expect(lines.some((line) => /no result for call .* within 100 ms; sending it again/.test(line))).toBe(true);
      expect(runs).toBe(1);
    } finally {
      await runtime.close();
    }
  });
});
