import { create, toBinary } from "@bufbuild/protobuf";
import { implement } from "@shoal/sdk";
import { EnvelopeSchema } from "@shoal/sdk/internal";
import { describe, expect, it, vi } from "vitest";
import { GreetRequestSchema } from "../../../../examples/greeter/src/gen/greeter/v1/greeter_pb.js";
import { GreeterFunction } from "../../../../examples/greeter/src/gen/greeter/v1/greeter_shoal.js";
import { greeter } from "../../../../examples/greeter/src/greeter.js";
import { ShardProcessor } from "../shard/shard-processor.js";
import { createMemoryStorage } from "../storage/memory/memory-storage.js";
import { type InstancePage, mergeInstancePages, type PageRequest } from "./paging.js";
import { createNodeRuntime } from "./runtime.js";

const state = new Uint8Array([1]);
const page = (keys: string[], next?: string): InstancePage => ({ instances: keys.map((key) => ({ key, state })), next });

describe("paging through a node's instances", () => {
  it("keeps the first keys of all shards' pages, in key order", () => {
    const merged = mergeInstancePages([page(["b", "e", "f"], "f"), page(["a", "c"]), page(["d", "g", "h"], "h")], 3);
    expect(merged).toEqual({ keys: ["a", "b", "c"], more: true });
  });

  it("says more when a shard has keys beyond a page that was kept whole", () => {
    expect(mergeInstancePages([page(["a", "b"], "b"), page([])], 2)).toEqual({ keys: ["a", "b"], more: true });
    expect(mergeInstancePages([page(["a", "b"]), page([])], 2)).toEqual({ keys: ["a", "b"], more: false });
    expect(mergeInstancePages([page([]), page([])], 2)).toEqual({ keys: [], more: false });
  });

  it("pages through every key of many shards once and in order", () => {
    // 7 shards, keys spread over them unevenly (and some shards empty).
    const all = Array.from({ length: 500 }, (_, i) => `user-${String((i * 7919) % 100_000).padStart(5, "0")}`);
    const shards = Array.from({ length: 7 }, (_, s) => all.filter((_, i) => (i * i) % 7 === s));
    expect(shards.flat().length).toBe(all.length);
    const asked: PageRequest[] = [];
    const seen: string[] = [];
    let after: string | undefined;
    for (let pages = 0; pages < 1000; pages++) {
      const request = { after, limit: 13 };
      asked.push(request);
      const merged = mergeInstancePages(
        shards.map((instances) =>
          pageOfAll(
            instances.map((key) => ({ key, state })),
            request,
          ),
        ),
        request.limit,
      );
      expect(merged.keys.length).toBeLessThanOrEqual(13);
      seen.push(...merged.keys);
      if (!merged.more) break;
      after = merged.keys.at(-1);
    }
    expect(seen).toEqual([...all].sort());
    expect(asked.length).toBe(Math.ceil(all.length / 13));
  });
});

describe("NodeRuntime.listInstances", () => {
  it("asks each shard for one page after the key given, not for all its instances", async () => {
    const runtime = createNodeRuntime({
      functions: [implement(GreeterFunction, greeter)],
      storage: createMemoryStorage(),
      shards: 4,
      logger: "silent",
    });
    try {
      await runtime.start();
      const names = Array.from({ length: 40 }, (_, i) => `n${String(i).padStart(2, "0")}`);
      for (const name of names) {
        await runtime.accept(
          create(EnvelopeSchema, {
            id: `m-${name}`,
            target: { type: "greeter.v1.Greeter", key: name },
            handler: "Greet",
            payload: toBinary(GreetRequestSchema, create(GreetRequestSchema, { name })),
          }),
        );
      }
      await runtime.whenIdle();
      const asked: PageRequest[] = [];
      const listInstances = ShardProcessor.prototype.listInstances;
      vi.spyOn(ShardProcessor.prototype, "listInstances").mockImplementation(function (this: ShardProcessor, type, request) {
        asked.push(request);
        return listInstances.call(this, type, request);
      });
      expect(runtime.listInstances("greeter.v1.Greeter", { limit: 7 })).toEqual({ keys: names.slice(0, 7), more: true });
      expect(runtime.listInstances("greeter.v1.Greeter", { after: "n35", limit: 7 })).toEqual({ keys: names.slice(36), more: false });
      expect(asked).toEqual([...Array(4).fill({ limit: 7 }), ...Array(4).fill({ after: "n35", limit: 7 })]);
    } finally {
      vi.restoreAllMocks();
      await runtime.close();
    }
  });
});

/** A fake shard's page, cut from all its instances as a shard's store pages (`ShardProcessor.listInstances`). */
function pageOfAll(instances: ReadonlyArray<{ readonly key: string; readonly state: Uint8Array }>, request: PageRequest): InstancePage {
  const after = request.after;
  const matching = instances
    .filter((i) => after === undefined || i.key > after)
    .sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  const page = matching.slice(0, request.limit);
  return matching.length > request.limit ? { instances: page, next: page.at(-1)?.key } : { instances: page };
}
