import { describe, expect, it } from "vitest";
import { createCycleProbe } from "./cycle-probe.js";

const silent = { debug() {}, info() {}, warn() {}, error() {} };

/** A probe over a fixed wait-for graph, recording where it breaks cycles. */
function probeOver(graph: Record<string, string[]>) {
  const broken: Array<[string, string, string]> = [];
  const probe = createCycleProbe({
    waitsOf: async (instance) => graph[instance] ?? [],
    breakCycle: async (instance, callee, cycle) => {
      broken.push([instance, callee, cycle]);
      return true;
    },
    logger: silent,
  });
  return { probe, broken };
}

describe("createCycleProbe", () => {
  it("breaks a cycle at the call its smallest instance awaits, whichever of its calls the search starts from", async () => {
    const graph = { "t/c": ["t/a"], "t/a": ["t/b"], "t/b": ["t/c"] };
    for (const [from, to] of [
      ["t/a", "t/b"],
      ["t/b", "t/c"],
      ["t/c", "t/a"],
    ] as const) {
      const { probe, broken } = probeOver(graph);
      await probe(from, to);
      expect(broken).toEqual([["t/a", "t/b", "call cycle: t/a -> t/b -> t/c -> t/a (each instance is locked awaiting the next)"]]);
    }
  });

  it("breaks nothing when the callee's waits do not lead back to the caller", async () => {
    const { probe, broken } = probeOver({ "t/b": ["t/c"], "t/c": ["t/d"], "t/d": ["t/c"] });
    await probe("t/a", "t/b");
    expect(broken).toEqual([]);
  });

  it("gives a search up when a node cannot be asked, without rejecting", async () => {
    const probe = createCycleProbe({
      waitsOf: () => Promise.reject(new Error("no responders")),
      breakCycle: () => Promise.reject(new Error("not reached")),
      logger: silent,
    });
    await expect(probe("t/a", "t/b")).resolves.toBeUndefined();
  });
});
