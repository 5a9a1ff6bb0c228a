import { describe, expect, it } from "vitest";
import { CallCycles } from "./call-cycles.js";

describe("CallCycles", () => {
  it("finds a call back into an instance up the call chain, or into itself", () => {
    const cycles = new CallCycles();
    expect(cycles.find(["A/a"], "A/b", "A/a", true)).toBe("call cycle: A/a -> A/b -> A/a (the instance is locked awaiting this call)");
    expect(cycles.find([], "A/a", "A/a", false)).toBe("call cycle: A/a -> A/a (the instance is locked awaiting this call)");
    expect(cycles.find(["A/a"], "A/b", "A/c", true)).toBeUndefined();
  });

  it("finds cycles across chains through every call an instance awaits in parallel, until its waits end", () => {
    const cycles = new CallCycles();
    // a awaits b and c at once; c awaits d.
    const ab = cycles.wait("a", "b");
    const ac = cycles.wait("a", "c");
    const cd = cycles.wait("c", "d");
    expect(cycles.find([], "d", "a", true)).toBe("call cycle: d -> a -> c -> d (each instance is locked awaiting the next)");
    expect(cycles.find([], "b", "a", true)).toBe("call cycle: b -> a -> b (each instance is locked awaiting the next)");
    // An instance not locked while it waits (a shared handler) closes no cycle through the graph.
    expect(cycles.find([], "d", "a", false)).toBeUndefined();
    ac();
    ac();
    expect(cycles.find([], "d", "a", true)).toBeUndefined();
    expect(cycles.find([], "b", "a", true)).toBeDefined();
    ab();
    cd();
    expect(cycles.find([], "b", "a", true)).toBeUndefined();
  });
});
