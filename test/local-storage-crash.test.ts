// The LMDB local backend under real process deaths: a child writes in a loop
// and reports each write whose `durable` resolved; it is SIGKILLed at random
// moments, SIGTERMed, and run out of file space. Every reported write must be
// there after reopen, each shard's writes land as a prefix of the order they
// were made in, and reopening is never blocked by the dead holder's lock.
// The children run the built dist (npm run build first).
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { createLocalShardStorage } from "../packages/runtime/src/storage/local/lmdb-storage.js";
import { type Child, repoRoot, start } from "./support/processes.js";

const lmdbStorage = `${repoRoot}packages/runtime/dist/storage/local/lmdb-storage.js`;
const shards = 4;

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function temporaryDirectory(): Promise<string> {
  const directory = await mkdtemp(join(tmpdir(), "shoal-lmdb-crash-"));
  cleanups.push(() => rm(directory, { recursive: true, force: true }));
  return directory;
}

/**
 * A child that writes to every shard in a loop, up to 64 writes in flight,
 * each write one entry `instance/<i>` and the shard's `meta/last` = i, and
 * prints `ack <shard> <i>` once the write is durable. It goes on from what
 * the store holds. On SIGTERM it closes the store and prints `closed`.
 */
function writer(directory: string): Child {
  const script = `
    import { createLocalShardStorage } from ${JSON.stringify(lmdbStorage)};
    const storage = await createLocalShardStorage({ directory: ${JSON.stringify(directory)} });
    const stores = [];
    for (let shard = 0; shard < ${shards}; shard++) stores.push(await storage.openShard(shard, "child-" + process.pid));
    const next = stores.map((store) => {
      const last = store.get("meta", "last");
      return last === undefined ? 0 : Number(new TextDecoder().decode(last)) + 1;
    });
    let stopping = false;
    process.on("SIGTERM", async () => {
      stopping = true;
      await storage.close();
      console.log("closed");
      process.exit(0);
    });
    console.log("writing from " + next.join(","));
    const inFlight = [];
    const encode = (s) => new TextEncoder().encode(s);
    while (!stopping) {
      for (let shard = 0; shard < ${shards} && !stopping; shard++) {
        const i = next[shard]++;
        const { durable } = stores[shard].write(
          [
            { table: "instance", key: String(i).padStart(8, "0"), value: encode("v" + i + "-".repeat(i % 300)) },
            { table: "meta", key: "last", value: encode(String(i)) },
          ],
          [],
        );
        inFlight.push(durable.then(() => process.stdout.write("ack " + shard + " " + i + "\\n")));
      }
      if (inFlight.length >= 64) await inFlight.splice(0, 32)[31];
    }
  `;
  return start(process.execPath, ["--input-type=module", "-e", script]);
}

/** The highest acknowledged write per shard in a child's output (-1 for none). */
function acknowledged(output: string): number[] {
  const highest = Array.from({ length: shards }, () => -1);
  for (const [, shard, i] of output.matchAll(/^ack (\d+) (\d+)$/gm)) {
    highest[Number(shard)] = Math.max(highest[Number(shard)] as number, Number(i));
  }
  return highest;
}

/**
 * Reopens the store and checks every shard holds an unbroken prefix of its
 * writes covering `acked`; returns the highest write found per shard.
 */
async function expectDurable(directory: string, acked: readonly number[]): Promise<number[]> {
  const storage = await createLocalShardStorage({ directory });
  const found: number[] = [];
  try {
    for (let shard = 0; shard < shards; shard++) {
      const store = await storage.openShard(shard, "checker");
      const keys = [...store.range("instance")].map((e) => Number(e.key));
      // Writes of a shard land in the order they were made: no gaps.
      expect(keys).toEqual(Array.from({ length: keys.length }, (_, i) => i));
      expect(keys.length - 1).toBeGreaterThanOrEqual(acked[shard] as number);
      // Each write landed whole: its meta/last goes with its entry.
      const last = store.get("meta", "last");
      expect(last === undefined ? -1 : Number(new TextDecoder().decode(last))).toBe(keys.length - 1);
      const lastKey = String(keys.length - 1).padStart(8, "0");
      if (keys.length > 0) expect(new TextDecoder().decode(store.get("instance", lastKey))).toMatch(new RegExp(`^v${keys.length - 1}-*$`));
      found.push(keys.length - 1);
    }
  } finally {
    await storage.close();
  }
  return found;
}

describe("local storage on LMDB with real processes", () => {
  it("keeps every acknowledged write through SIGKILLs at random moments and a SIGTERM, and reopens each time", {
    timeout: 120_000,
  }, async () => {
    const directory = await temporaryDirectory();
    // The highest write of shard 0 in the store: the next child goes on after it.
    let stored = -1;
    for (let round = 0; round < 5; round++) {
      const child = writer(directory);
      cleanups.push(async () => {
        child.process.kill("SIGKILL");
        await child.exited;
      });
      await child.waitFor(/^writing from/m);
      if (round === 0) {
        // A live holder keeps everyone else out.
        await expect(createLocalShardStorage({ directory })).rejects.toThrow(
          `storage directory ${directory} is in use by the process with pid ${child.process.pid}`,
        );
      }
      // A random moment: after between 20 and 400 acknowledgements of shard 0, and a few turns more.
      const after = stored + 20 + Math.floor(Math.random() * 380);
      await child.waitFor(new RegExp(`^ack 0 ${after}$`, "m"), 60_000);
      for (let turns = Math.floor(Math.random() * 50); turns > 0; turns--) await new Promise((resolve) => setImmediate(resolve));
      const last = round === 4;
      child.process.kill(last ? "SIGTERM" : "SIGKILL");
      const exit = await child.exited;
      expect(exit).toBe(last ? 0 : "SIGKILL");
      if (last) expect(child.stdout()).toContain("closed");
      const acked = acknowledged(child.stdout());
      expect(acked[0]).toBeGreaterThanOrEqual(after);
      stored = (await expectDurable(directory, acked))[0] as number;
    }
  });

  it("fails writes with a StorageError naming the directory when the file cannot grow, loses nothing acknowledged, and the handle refuses more", {
    timeout: 60_000,
  }, async () => {
    const directory = await temporaryDirectory();
    // RLIMIT_FSIZE (ulimit -f; sh counts 512-byte blocks) stands in for a
    // full disk: a write past it fails (EFBIG) as it would with ENOSPC. The
    // store must find that out before LMDB does (space-reserve.ts): LMDB's
    // own failed page write prints "Write error" and can corrupt the heap.
    const script = `
      import { createLocalShardStorage } from ${JSON.stringify(lmdbStorage)};
      const storage = await createLocalShardStorage({ directory: ${JSON.stringify(directory)} });
      const store = await storage.openShard(0, "child");
      const value = new Uint8Array(1000).fill(7);
      let i = 0;
      try {
        for (;; i++) {
          await store.write([{ table: "instance", key: String(i).padStart(8, "0"), value }], []).durable;
          console.log("ack " + i);
        }
      } catch (error) {
        console.log("failed: " + error.name + ": " + error.message);
      }
      try {
        store.write([{ table: "instance", key: "after", value }], []);
        console.log("accepted after the failure");
      } catch (error) {
        console.log("refused: " + error.name + ": " + error.message);
      }
      await storage.close();
      console.log("closed");
    `;
    const child = start("/bin/sh", ["-c", 'ulimit -f 1024 && exec "$0" --input-type=module -e "$1"', process.execPath, script]);
    cleanups.push(async () => {
      child.process.kill("SIGKILL");
      await child.exited;
    });
    expect(await child.exited).toBe(0);
    const output = child.stdout();
    expect(output).toContain("closed");
    expect(output).toMatch(
      new RegExp(
        `^failed: StorageError: local storage ${directory}: a write transaction failed: (file too large \\(EFBIG\\)|disk full \\(ENOSPC\\))`,
        "m",
      ),
    );
    expect(output).toMatch(/^refused: StorageError: shard 0: an earlier write failed \(.*\); open the shard again$/m);
    expect(output).not.toContain("accepted after the failure");
    expect(child.stderr()).not.toContain("Write error");
    const acked = [...output.matchAll(/^ack (\d+)$/gm)].map(([, i]) => Number(i));
    expect(acked.length).toBeGreaterThan(50);

    const storage = await createLocalShardStorage({ directory });
    try {
      const store = await storage.openShard(0, "checker");
      const keys = [...store.range("instance")].map((e) => e.key);
      for (const i of acked) expect(keys).toContain(String(i).padStart(8, "0"));
      expect(keys).not.toContain("after");
      // With the space back, the store takes writes again.
      await store.write([{ table: "instance", key: "after", value: new Uint8Array(1000) }], []).durable;
    } finally {
      await storage.close();
    }
  });
});
