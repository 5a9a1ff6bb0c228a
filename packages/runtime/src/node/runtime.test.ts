// createNodeRuntime refuses options it cannot run with, naming them.
import { describe, expect, it } from "vitest";
import { createMemoryStorage } from "../storage/memory/memory-storage.js";
import { createNodeRuntime } from "./runtime.js";

describe("createNodeRuntime", () => {
  it.each([
    ["instanceCacheSize", 0],
    ["instanceCacheSize", 1.5],
    ["instanceIdleMs", -1],
  ] as const)("refuses %s %d", (name, value) => {
    expect(() => createNodeRuntime({ functions: [], storage: createMemoryStorage(), logger: "silent", [name]: value })).toThrow(
      `${name} must be a positive integer, got ${value}`,
    );
  });
});
