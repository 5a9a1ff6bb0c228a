// What bounds the store on disk (it replaced the log-bound test of the old
// log): replies kept for idempotency keys expire out of the store, and under
// a steady set of instances the data file stops growing, however many
// requests come.
import { closeSync, mkdtempSync, openSync, readSync, rmSync } from "node:fs";
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

/** Resolves once `check` holds; the node's sweep runs about every second. */
async function until(check: () => boolean): Promise<void> {
  while (!check()) await new Promise((resolve) => setTimeout(resolve, 50));
}

it("deletes expired idempotency replies from the store, and the data file stops growing under a steady set of keys", {
  timeout: 120_000,
}, async () => {
  dir = mkdtempSync(join(tmpdir(), "shoal-store-bound-"));
  const clock = createManualClock(1_000_000);
  const memoRetentionMs = 60_000;
  const runtime = createRuntime({
    functions: [implement(CounterFunction, counter)],
    storage: await createLocalStorage({ directory: dir, fsync: false }),
    shards: 8,
    clock,
    memoRetentionMs,
    logger: "silent",
  });
  running = runtime;
  await runtime.start();
  const client = createFunctionClient(CounterFunction, createRouterTransport(runtime.routes));
  const memos = () => runtime.status().reduce((n, s) => n + s.memos, 0);
  // What LMDB uses of the file: up to the last page of its latest meta.
  // The file itself is longer by the room the store reserves ahead of
  // LMDB's writes (space-reserve.ts), which follows the largest transaction.
  const usedBytes = () => {
    const fd = openSync(join(dir as string, "data.mdb"), "r");
    try {
      const metas = Buffer.alloc(2 * 4096);
      readSync(fd, metas, 0, metas.length, 0);
      // Each 4 KiB meta page: mm_last_pg at byte 144, mm_txnid at 152.
      const latest = metas.readBigUInt64LE(152) > metas.readBigUInt64LE(4096 + 152) ? 0 : 4096;
      return (Number(metas.readBigUInt64LE(latest + 144)) + 1) * 4096;
    } finally {
      closeSync(fd);
    }
  };

  const sizes: number[] = [];
  for (let round = 0; round < 8; round++) {
    // 2 000 requests, each with its own Idempotency-Key, to the same 50 counters.
    for (let batch = 0; batch < 20; batch++) {
      await Promise.all(
        Array.from({ length: 100 }, (_, i) => client.add({ key: `k${i % 50}`, delta: 1n }, { idempotencyKey: `r${round}-${batch}-${i}` })),
      );
    }
    expect(memos()).toBe(2_000);
    await clock.advance(memoRetentionMs + 1);
    await until(() => memos() === 0);
    sizes.push(usedBytes());
  }
  const total = runtime.status().reduce((n, s) => n + s.instances, 0);
  expect(total).toBe(50);
  // 16 000 replies were written and deleted: the pages they freed are used
  // again, so after the first rounds the store no longer grows.
  expect(sizes.slice(3).every((size) => size === sizes[2])).toBe(true);
});
