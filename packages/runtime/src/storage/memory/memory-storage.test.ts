import { create } from "@bufbuild/protobuf";
import { LogRecordSchema } from "@shoal/sdk/internal";
import { expect, it } from "vitest";
import { describeStorageConformance } from "../storage.conformance.js";
import { createMemoryStorage } from "./memory-storage.js";

describeStorageConformance(
  "memory",
  async () => ({
    backend: createMemoryStorage(),
    async cleanup() {},
  }),
  { survivesRestart: false, canTearWrites: false },
);

it("memory storage makes the appends of one event-loop turn durable together, in one group", async () => {
  const storage = createMemoryStorage();
  const log = await storage.openShard(0, "node-a");
  const before = storage.stats?.();
  let durable = 0;
  for (let i = 0; i < 3; i++) void log.append([create(LogRecordSchema, {})]).durable.then(() => durable++);
  expect(durable).toBe(0);
  await Promise.resolve();
  expect(durable).toBe(0);
  await new Promise((resolve) => setImmediate(resolve));
  expect(durable).toBe(3);
  expect((storage.stats?.().groups ?? 0) - (before?.groups ?? 0)).toBe(1);
});
