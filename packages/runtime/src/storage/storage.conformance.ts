// The one test suite every storage backend passes (memory, local, nats): the
// runtime relies on these semantics, not on a particular backend.
import { create } from "@bufbuild/protobuf";
import { type LogRecord, LogRecordSchema, ShardSnapshotSchema } from "@shoal/sdk/internal";
import { describe, expect, it } from "vitest";
import { type AppendResult, FencedError, RecordEncodingError, type RecoveredShard, type StorageBackend, StorageError } from "./storage.js";

/** What a backend can show: a memory backend keeps nothing across instances. */
export interface StorageCapabilities {
  /** Reopening the same storage finds what was durable (memory: no). */
  readonly survivesRestart: boolean;
  /** The test can damage the last write as a crash would (memory: no). */
  readonly canTearWrites: boolean;
}

/** A backend under test, made fresh for each test by the suite's factory. */
export interface StorageUnderTest {
  readonly backend: StorageBackend;
  /**
   * Opens the same storage again, as a restarted process would; the suite
   * calls it after closing the previous backend. Omit for backends that keep
   * nothing across instances (memory), whose capabilities say so.
   */
  readonly reopen?: () => Promise<StorageBackend>;
  /**
   * Damages the last record written as a crash in the middle of its write
   * would (local: chops bytes off the last segment). Called between close
   * and reopen.
   */
  readonly tearLastRecord?: () => Promise<void>;
  /** Bytes the log takes now, to see truncation give space back. */
  readonly logBytes?: () => Promise<number>;
  /** Removes what the backend left behind (temporary directories, streams). */
  cleanup(): Promise<void>;
}

/**
 * Defines the storage conformance suite for one backend.
 *
 * @param name - shown in the test names, e.g. `local`
 * @param create - makes a fresh, empty backend for each test
 */
export function describeStorageConformance(
  name: string,
  create: () => Promise<StorageUnderTest>,
  capabilities: StorageCapabilities = { survivesRestart: true, canTearWrites: true },
): void {
  // Cases a backend cannot take part in are not defined for it, rather than
  // defined and skipped: every case that is listed runs.
  const restartIt = capabilities.survivesRestart ? it : undefined;
  const tearIt = capabilities.survivesRestart && capabilities.canTearWrites ? it : undefined;
  describe(`storage conformance: ${name}`, () => {
    it("appends, makes durable and recovers in order", () =>
      run(create, async (t) => {
        const log = await t.backend.openShard(0, "node-a");
        const a = log.append([input("a1"), input("a2")]);
        const b = log.append([input("a3")]);
        expect(b.lastSequence).toBeGreaterThan(a.lastSequence);
        await Promise.all([a.durable, b.durable]);

        const recovered = await log.recover();
        expect(recovered.snapshot).toBeUndefined();
        expect(ids(recovered)).toEqual(["a1", "a2", "a3"]);
        expectIncreasing(recovered);
        const user = recovered.records.filter((r) => r.record.kind.case !== "fence");
        expect(user[1]?.sequence).toBe(a.lastSequence);
        expect(user[2]?.sequence).toBe(b.lastSequence);
        // The fence of this owner comes first.
        expect(fences(recovered)).toEqual([{ owner: "node-a", epoch: log.epoch }]);
        expect(recovered.records[0]?.record.kind.case).toBe("fence");
      }));

    it("refuses a record that cannot be encoded with RecordEncodingError, appends none of its batch and stays writable", () =>
      run(create, async (t) => {
        const log = await t.backend.openShard(0, "node-a");
        const tooLate = input("late");
        if (tooLate.kind.case === "input" && tooLate.kind.value.envelope) tooLate.kind.value.envelope.deliverAtMs = 2n ** 63n;
        expect(() => log.append([input("b1"), tooLate])).toThrow(RecordEncodingError);
        expect(() => log.append([tooLate])).toThrow(
          /the input record cannot be encoded: cannot encode field shoal.v1.Envelope.deliver_at_ms/,
        );
        await log.append([input("a1")]).durable;
        expect(ids(await log.recover())).toEqual(["a1"]);
      }));

    it("keeps shards independent", () =>
      run(create, async (t) => {
        const logs = await Promise.all([0, 1, 7].map((shard) => t.backend.openShard(shard, "node-a")));
        const results: AppendResult[] = [];
        for (let i = 0; i < 5; i++) {
          for (const log of logs) results.push(log.append([input(`s${log.shard}-${i}`)]));
        }
        await Promise.all(results.map((r) => r.durable));
        const [zero, one, seven] = logs as [(typeof logs)[0], (typeof logs)[0], (typeof logs)[0]];
        await one.writeSnapshot(snapshotOf(1, (results.at(-1) as AppendResult).lastSequence));

        expect(ids(await zero.recover())).toEqual(["s0-0", "s0-1", "s0-2", "s0-3", "s0-4"]);
        expect(ids(await seven.recover())).toEqual(["s7-0", "s7-1", "s7-2", "s7-3", "s7-4"]);
        const recoveredOne = await one.recover();
        expect(recoveredOne.snapshot?.shard).toBe(1);
        expect(recoveredOne.records).toEqual([]);
        expect(zero.epoch).toBe(seven.epoch);
      }));

    it("orders concurrent appends and commits them in shared groups", () =>
      run(create, async (t) => {
        const logs = await Promise.all(Array.from({ length: 8 }, (_, shard) => t.backend.openShard(shard, "node-a")));
        const before = t.backend.stats?.();

        // 64 appends issued together: durable in append order.
        const order: number[] = [];
        const first = Array.from({ length: 64 }, (_, i) => {
          const result = (logs[i % 8] as (typeof logs)[0]).append([commit(`c${i}`)]);
          void result.durable.then(() => order.push(i));
          return result;
        });
        await Promise.all(first.map((r) => r.durable));
        expect(order).toEqual(Array.from({ length: 64 }, (_, i) => i));

        // 64 appenders, each waiting for its last append before the next.
        await Promise.all(
          Array.from({ length: 64 }, async (_, i) => {
            const log = logs[i % 8] as (typeof logs)[0];
            for (let round = 0; round < 5; round++) await log.append([commit(`w${i}-${round}`)]).durable;
          }),
        );

        for (const log of logs) {
          const recovered = await log.recover();
          expectIncreasing(recovered);
          const expected = [
            ...Array.from({ length: 8 }, (_, k) => `c${k * 8 + log.shard}`),
            ...Array.from({ length: 8 }, (_, k) => Array.from({ length: 5 }, (_, round) => `w${k * 8 + log.shard}-${round}`)),
          ];
          const got = ids(recovered);
          expect(got.slice(0, 8)).toEqual(expected.slice(0, 8));
          // Per appender, its rounds are in order; appenders interleave.
          for (let k = 0; k < 8; k++) {
            const mine = got.filter((id) => id.startsWith(`w${k * 8 + log.shard}-`));
            expect(mine).toEqual(Array.from({ length: 5 }, (_, round) => `w${k * 8 + log.shard}-${round}`));
          }
          expect(got).toHaveLength(8 + 40);
        }

        const after = t.backend.stats?.();
        if (before !== undefined && after !== undefined) {
          const appends = 64 + 64 * 5;
          expect(after.records - before.records).toBe(appends);
          // Group commit: far fewer durable writes than appends.
          expect(after.groups - before.groups).toBeLessThan(appends / 4);
        }
      }));

    it("recovers a snapshot and only the records after it", () =>
      run(create, async (t) => {
        const log = await t.backend.openShard(0, "node-a");
        // An owner recovers first; a later owner's recovery must not depend on it.
        expect((await log.recover()).snapshot).toBeUndefined();
        await log.append([input("r1"), input("r2")]).durable;
        const at = log.append([input("r3")]);
        await at.durable;
        await log.append([input("r4"), input("r5")]).durable;
        const snapshot = snapshotOf(0, at.lastSequence);
        await log.writeSnapshot(snapshot);
        await log.append([input("r6")]).durable;

        const next = await t.backend.openShard(0, "node-b");
        const recovered = await next.recover();
        expect(recovered.snapshot).toEqual(snapshot);
        expect(ids(recovered)).toEqual(["r4", "r5", "r6"]);
        for (const r of recovered.records) expect(r.sequence).toBeGreaterThan(at.lastSequence);
        expect(fences(recovered)).toEqual([{ owner: "node-b", epoch: next.epoch }]);
      }));

    it("refuses snapshots of another shard, of records not durable yet, or older than the stored one", () =>
      run(create, async (t) => {
        const log = await t.backend.openShard(2, "node-a");
        const first = log.append([input("x1")]);
        await first.durable;
        const second = log.append([input("x2")]);
        await second.durable;
        await log.writeSnapshot(snapshotOf(2, second.lastSequence));

        await expect(log.writeSnapshot(snapshotOf(3, second.lastSequence))).rejects.toThrow(/shard 3/);
        await expect(log.writeSnapshot(snapshotOf(2, second.lastSequence + 1000n))).rejects.toThrow(/not durable/);
        await expect(log.writeSnapshot(snapshotOf(2, first.lastSequence))).rejects.toThrow(StorageError);
        await expect(log.writeSnapshot(snapshotOf(2, first.lastSequence))).rejects.toThrow(/older/);
        // The stored one is intact.
        expect((await log.recover()).snapshot?.sequence).toBe(second.lastSequence);
      }));

    it("truncates below snapshots and still recovers correctly", () =>
      run(create, async (t) => {
        let shard0 = await t.backend.openShard(0, "node-a");
        let shard1 = await t.backend.openShard(1, "node-a");
        await Promise.all([shard0.recover(), shard1.recover()]);
        const early = shard1.append([input("s1-early")]);
        await early.durable;
        let last = early;
        for (let i = 0; i < 40; i++) {
          last = shard0.append([commit(`s0-${i}a`), commit(`s0-${i}b`)]);
          await last.durable;
        }
        const before = await t.logBytes?.();
        await shard0.writeSnapshot(snapshotOf(0, last.lastSequence));
        await shard0.append([input("s0-after")]).durable;
        const middle = await t.logBytes?.();
        await shard1.writeSnapshot(snapshotOf(1, early.lastSequence));
        const end = await t.logBytes?.();
        if (before !== undefined && middle !== undefined && end !== undefined) {
          // Segments holding only snapshotted records of shard 0 are gone; the
          // first one waits for shard 1's snapshot.
          expect(middle).toBeLessThan(before);
          expect(end).toBeLessThan(middle);
        }

        // Recovery in the same process, from what is left.
        const moved = await t.backend.openShard(0, "node-a2");
        const inProcess = await moved.recover();
        expect(inProcess.snapshot?.sequence).toBe(last.lastSequence);
        expect(ids(inProcess)).toEqual(["s0-after"]);
        shard0 = moved;

        const epochs = [shard0.epoch, shard1.epoch];
        const backend = await t.restart();
        shard0 = await backend.openShard(0, "node-b");
        shard1 = await backend.openShard(1, "node-b");
        // Epochs keep increasing although the fence records were truncated.
        expect(shard0.epoch).toBeGreaterThan(epochs[0] as bigint);
        expect(shard1.epoch).toBeGreaterThan(epochs[1] as bigint);
        const zero = await shard0.recover();
        expect(zero.snapshot?.sequence).toBe(last.lastSequence);
        expect(ids(zero)).toEqual(["s0-after"]);
        const one = await shard1.recover();
        expect(one.snapshot?.sequence).toBe(early.lastSequence);
        expect(ids(one)).toEqual([]);
      }));

    restartIt?.("recovers everything durable after close and reopen", () =>
      run(create, async (t) => {
        if (t.reopen === undefined) throw new Error(`${name}: survivesRestart needs reopen()`);
        const zero = await t.backend.openShard(0, "node-a");
        const one = await t.backend.openShard(1, "node-a");
        await zero.append([input("z1"), input("z2")]).durable;
        const covered = one.append([input("o1")]);
        await covered.durable;
        await one.writeSnapshot(snapshotOf(1, covered.lastSequence));
        // Not awaited: close() flushes it.
        const unawaited = one.append([input("o2")]);
        const epochs = [zero.epoch, one.epoch];

        const backend = await t.restart();
        await unawaited.durable;
        const zeroAgain = await backend.openShard(0, "node-b");
        const oneAgain = await backend.openShard(1, "node-b");
        expect(zeroAgain.epoch).toBeGreaterThan(epochs[0] as bigint);
        expect(oneAgain.epoch).toBeGreaterThan(epochs[1] as bigint);
        expect(ids(await zeroAgain.recover())).toEqual(["z1", "z2"]);
        const recoveredOne = await oneAgain.recover();
        expect(recoveredOne.snapshot?.sequence).toBe(covered.lastSequence);
        expect(ids(recoveredOne)).toEqual(["o2"]);
        // Sequences continue after the restart.
        const later = zeroAgain.append([input("z3")]);
        expect(later.lastSequence).toBeGreaterThan(unawaited.lastSequence);
        await later.durable;
        const recoveredZero = await zeroAgain.recover();
        expect(ids(recoveredZero)).toEqual(["z1", "z2", "z3"]);
        expectIncreasing(recoveredZero);
      }),
    );

    tearIt?.("ignores a torn last record and keeps appending", () =>
      run(create, async (t) => {
        if (t.reopen === undefined || t.tearLastRecord === undefined)
          throw new Error(`${name}: canTearWrites needs reopen() and tearLastRecord()`);
        const log = await t.backend.openShard(0, "node-a");
        await log.append([input("t1")]).durable;
        const torn = log.append([input("t2")]);
        await torn.durable;

        let backend = await t.restart(t.tearLastRecord);
        let again = await backend.openShard(0, "node-b");
        expect(ids(await again.recover())).toEqual(["t1"]);
        const next = again.append([input("t3")]);
        await next.durable;

        backend = await t.restart();
        again = await backend.openShard(0, "node-c");
        const recovered = await again.recover();
        expect(ids(recovered)).toEqual(["t1", "t3"]);
        expectIncreasing(recovered);
      }),
    );

    it("refuses a stale writer", () =>
      run(create, async (t) => {
        const old = await t.backend.openShard(3, "node-a");
        expect(ids(await old.recover())).toEqual([]);
        await old.append([input("f1")]).durable;
        // Accepted before the shard moves: still completes.
        const inFlight = old.append([input("f2")]);

        const young = await t.backend.openShard(3, "node-b");
        expect(young.epoch).toBeGreaterThan(old.epoch);
        await inFlight.durable;
        expect(() => old.append([input("stale")])).toThrow(FencedError);
        await expect(old.writeSnapshot(snapshotOf(3, inFlight.lastSequence))).rejects.toThrow(FencedError);

        await young.append([input("f3")]).durable;
        const recovered = await young.recover();
        expect(ids(recovered)).toEqual(["f1", "f2", "f3"]);
        expect(fences(recovered)).toEqual([
          { owner: "node-a", epoch: old.epoch },
          { owner: "node-b", epoch: young.epoch },
        ]);
        expectIncreasing(recovered);
      }));

    it("refuses use after close and bad shard numbers", () =>
      run(create, async (t) => {
        await expect(t.backend.openShard(-1, "node-a")).rejects.toThrow(StorageError);
        await expect(t.backend.openShard(1.5, "node-a")).rejects.toThrow(StorageError);
        const log = await t.backend.openShard(0, "node-a");
        const pending = log.append([input("c1")]);
        await log.close();
        await pending.durable;
        expect(() => log.append([input("c2")])).toThrow(StorageError);

        const other = await t.backend.openShard(1, "node-a");
        await t.backend.close();
        await expect(t.backend.openShard(2, "node-a")).rejects.toThrow(StorageError);
        expect(() => other.append([input("c3")])).toThrow(StorageError);
      }));
  });
}

/** A backend under test plus restarts. */
interface Harness extends StorageUnderTest {
  /** Closes the current backend, runs `between` (e.g. a tear), opens the storage again. */
  restart(between?: () => Promise<void>): Promise<StorageBackend>;
}

/** Runs one test on a fresh backend, then closes every backend it opened and cleans up. */
async function run(create: () => Promise<StorageUnderTest>, test: (t: Harness) => Promise<void>): Promise<void> {
  const made = await create();
  const opened: StorageBackend[] = [made.backend];
  let current = made.backend;
  const harness: Harness = {
    ...made,
    get backend() {
      return current;
    },
    async restart(between) {
      if (made.reopen === undefined) return current;
      await current.close();
      await between?.();
      current = await made.reopen();
      opened.push(current);
      return current;
    },
  };
  try {
    await test(harness);
  } finally {
    try {
      for (const backend of opened) await backend.close();
    } finally {
      await made.cleanup();
    }
  }
}

function input(id: string): LogRecord {
  return create(LogRecordSchema, {
    kind: { case: "input", value: { envelope: { id, target: { type: "test.v1.Counter", key: id } } } },
    writtenAtMs: 1n,
  });
}

/** A commit of about 200 bytes, the size of a small invocation's. */
function commit(id: string): LogRecord {
  return create(LogRecordSchema, {
    kind: {
      case: "commit",
      value: {
        consumed: [id],
        invocationId: id,
        stateWrites: [{ address: { type: "test.v1.Counter", key: id }, state: new Uint8Array(120).fill(7) }],
      },
    },
    writtenAtMs: 1n,
  });
}

function snapshotOf(shard: number, sequence: bigint) {
  return create(ShardSnapshotSchema, {
    shard,
    sequence,
    instances: [{ key: "k1", type: "test.v1.Counter", state: new Uint8Array([1, 2, 3]) }],
    nextOutboxSequence: 42n,
  });
}

/** The ids of the input and commit records, fences left out. */
function ids(recovered: RecoveredShard): string[] {
  return recovered.records.flatMap(({ record }) => {
    switch (record.kind.case) {
      case "input":
        return [record.kind.value.envelope?.id ?? ""];
      case "commit":
        return [record.kind.value.invocationId];
      default:
        return [];
    }
  });
}

function fences(recovered: RecoveredShard): { owner: string; epoch: bigint }[] {
  return recovered.records.flatMap(({ record }) =>
    record.kind.case === "fence" ? [{ owner: record.kind.value.owner, epoch: record.kind.value.epoch }] : [],
  );
}

function expectIncreasing(recovered: RecoveredShard): void {
  const sequences = recovered.records.map((r) => r.sequence);
  for (let i = 1; i < sequences.length; i++) {
    expect(sequences[i] as bigint).toBeGreaterThan(sequences[i - 1] as bigint);
  }
}
