// The log on disk stays bounded under the default snapshot count with many
// shards: no shard reaches `snapshotEvery` records, so only the byte budget
// makes them snapshot and lets the covered segments go.
import { mkdtempSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createRouterTransport } from "@connectrpc/connect";
import { createLocalStorage, createManualClock, createRuntime, type Runtime } from "@shoal/runtime";
import { createFunctionClient, implement } from "@shoal/sdk";
import { afterEach, expect, it } from "vitest";
import { counter } from "../bench/src/counter.js";
import { CounterFunction } from "../bench/src/gen/bench/v1/counter_shoal.js";

let dir: string | undefined;
let running: Runtime | undefined;
afterEach(async () => {
  await running?.close().catch(() => {});
  if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
});

function logBytesOnDisk(directory: string): number {
  return readdirSync(directory)
    .filter((name) => /^wal-\d+\.log$/.test(name))
    .reduce((total, name) => total + statSync(join(directory, name)).size, 0);
}

it("keeps the log within the byte budget plus a segment or so, with 64 shards and the default snapshotEvery", async () => {
  dir = mkdtempSync(join(tmpdir(), "shoal-log-bound-"));
  const budget = 32 * 1024;
  const segmentBytes = 8 * 1024;
  const storage = await createLocalStorage({ directory: dir, fsync: false, segmentBytes });
  const runtime = createRuntime({
    functions: [implement(CounterFunction, counter)],
    storage,
    shards: 64,
    logger: "silent",
    snapshotLogBytes: budget,
  });
  running = runtime;
  await runtime.start();
  const client = createFunctionClient(CounterFunction, createRouterTransport(runtime.routes));

  let largest = 0;
  for (let batch = 0; batch < 40; batch++) {
    await Promise.all(Array.from({ length: 100 }, (_, i) => client.add({ key: `k${(batch * 100 + i) % 997}`, delta: 1n })));
    largest = Math.max(largest, logBytesOnDisk(dir));
  }
  await runtime.close();
  running = undefined;

  const written = storage.stats?.().bytes ?? 0;
  // Far more than the bound was written: without snapshots the log would hold it all.
  expect(written).toBeGreaterThan(10 * (budget + segmentBytes));
  // The budget, the segment being written, and what the shards appended
  // between their checks; never the whole run.
  expect(largest).toBeLessThan(4 * (budget + segmentBytes));
  expect(logBytesOnDisk(dir)).toBeLessThan(4 * (budget + segmentBytes));
});

it("snapshots a shard that went idle once its oldest unsnapshotted record is older than snapshotAfterMs", async () => {
  dir = mkdtempSync(join(tmpdir(), "shoal-log-age-"));
  const clock = createManualClock(Date.UTC(2026, 0, 1));
  const runtime = createRuntime({
    functions: [implement(CounterFunction, counter)],
    storage: await createLocalStorage({ directory: dir, fsync: false }),
    shards: 4,
    logger: "silent",
    clock,
  });
  running = runtime;
  await runtime.start();
  const client = createFunctionClient(CounterFunction, createRouterTransport(runtime.routes));
  await client.add({ key: "idle", delta: 1n });
  const snapshots = () => readdirSync(join(dir as string, "snapshots")).filter((name) => name.endsWith(".snap"));
  expect(snapshots()).toEqual([]);
  // The default age bound (10 minutes) passes with no further append: the
  // node's periodic check takes the snapshot.
  await clock.advance(10 * 60_000);
  // Without the age bound this waits until the test times out.
  while (snapshots().length === 0) await new Promise((resolve) => setTimeout(resolve, 50));
});
