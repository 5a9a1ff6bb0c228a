// The upgrade of a data directory written by the old log format
// (test/fixtures/legacy-log, made by make-legacy-log.mjs with the runtime of
// c48f512) into the new store: what it converts, that it moves the old files
// aside, that it is refused with the file named when the old log is damaged,
// and that, interrupted at any step (in process, and with SIGKILL while the
// local backend opens the directory), the next start converts it again or
// finishes, to the same tables as an upgrade that ran through.
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create, fromBinary } from "@bufbuild/protobuf";
import { createLocalStorage, createMemoryStorage, type ShardStorage } from "@shoal/runtime";
import { legacyFolderPrefix, snapshotOf, upgradeLegacyDirectory } from "@shoal/runtime/internal";
import { InstanceStateSchema, memoId, type ShardSnapshot } from "@shoal/sdk/internal";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { CartStateSchema } from "../examples/shopping-cart/src/gen/shop/v1/cart_pb.js";
import { InventoryStateSchema } from "../examples/shopping-cart/src/gen/shop/v1/inventory_pb.js";
import { put } from "../packages/runtime/src/storage/shard-tables.js";
import { StorageError } from "../packages/runtime/src/storage/storage.js";
import { repoRoot, start } from "./support/processes.js";

const fixture = `${repoRoot}test/fixtures/legacy-log/shoal`;
const shards = 4;
const oldFiles = ["MANIFEST", "snapshots", "wal-00000000000000000001.log"];
const quiet = { info: () => {}, warn: () => {} };
/** The file that marks a conversion under way. */
const marker = "legacy-upgrade-in-progress";
let dirs: string[] = [];

beforeEach(() => {
  dirs = [];
});
afterEach(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

/** A fresh copy of the fixture. */
function copy(): string {
  const dir = mkdtempSync(join(tmpdir(), "shoal-legacy-upgrade-"));
  dirs.push(dir);
  cpSync(fixture, dir, { recursive: true });
  return dir;
}

async function snapshots(storage: ShardStorage): Promise<ShardSnapshot[]> {
  const out: ShardSnapshot[] = [];
  for (let shard = 0; shard < shards; shard++) {
    const store = await storage.openShard(shard, "reader");
    out.push(snapshotOf(store, 0n));
    await store.close();
  }
  return out;
}

/** Opens the local backend on `dir` in a child process (the built dist), which kills itself after `steps` upgrade steps. */
async function openKilledAfter(dir: string, steps: number): Promise<number | string> {
  const script = `
    const { createLocalStorage } = await import(${JSON.stringify(`${repoRoot}packages/runtime/dist/index.js`)});
    const storage = await createLocalStorage({ directory: ${JSON.stringify(dir)}, logger: { info() {}, warn() {} } });
    await storage.close();
    console.log("opened");
  `;
  const child = start(process.execPath, ["--input-type=module", "-e", script], {
    env: { SHOAL_TEST_UPGRADE_KILL_AFTER_STEPS: String(steps) },
  });
  return child.exited;
}

describe("opening an old data directory with the local backend", () => {
  it("converts it, keeps the old files aside, and opens it as converted the next time", async () => {
    const dir = copy();
    const messages: string[] = [];
    const storage = await createLocalStorage({
      directory: dir,
      logger: { info: (m) => messages.push(m), warn: (m) => messages.push(m) },
    });
    const converted = await snapshots(storage);
    await storage.close();
    expect(converted.map((s) => s.instances.length)).toEqual([1, 1, 3, 0]);
    expect(converted[3]?.pending.map((e) => `${e.target?.key}.${e.handler}`)).toEqual(["bob.AddItem"]);
    const [folder, ...others] = readdirSync(dir).filter((n) => n.startsWith(legacyFolderPrefix));
    expect(others).toEqual([]);
    expect(readdirSync(join(dir, folder ?? "")).sort()).toEqual(oldFiles);
    expect(readdirSync(dir).sort()).toEqual(["LOCK", "data.mdb", folder, "lock.mdb"].sort());
    expect(messages.at(-1)).toMatch(
      /converted the old log format in .* \(4 shards\) into the new store; the old files are kept in .*legacy-log-/,
    );

    const again = await createLocalStorage({ directory: dir, logger: quiet });
    expect(await snapshots(again)).toEqual(converted);
    await again.close();
  });

  it("killed with SIGKILL after any step of the upgrade, converts again or finishes at the next open, to the same tables", async () => {
    const reference = await createLocalStorage({ directory: copy(), logger: quiet });
    const expected = await snapshots(reference);
    await reference.close();

    // Steps: 4 shards converted, then 3 files moved.
    for (const steps of [1, 3, 4, 5, 6, 7]) {
      const dir = copy();
      expect(await openKilledAfter(dir, steps), `killed after step ${steps}`).toBe("SIGKILL");
      const storage = await createLocalStorage({ directory: dir, logger: quiet });
      expect(await snapshots(storage), `killed after step ${steps}`).toEqual(expected);
      await storage.close();
      expect(
        readdirSync(dir).filter((n) => oldFiles.includes(n)),
        `killed after step ${steps}`,
      ).toEqual([]);
      const folders = readdirSync(dir).filter((n) => n.startsWith(legacyFolderPrefix));
      expect(folders.length).toBe(1);
      expect(readdirSync(join(dir, folders[0] ?? "")).sort()).toEqual(oldFiles);
    }
  }, 120_000);
});

describe("upgrade of an old data directory", () => {
  let dir = "";
  beforeEach(() => {
    dir = copy();
  });

  it("writes every shard's state, pending messages, outbox, memos and watermarks, and keeps the old files aside", async () => {
    const storage = createMemoryStorage();
    const messages: string[] = [];
    const logger = { info: (m: string) => messages.push(m), warn: (m: string) => messages.push(m) };
    const result = await upgradeLegacyDirectory(dir, storage, { logger, now: () => new Date(Date.UTC(2026, 11, 2)) });
    expect(result?.shards).toEqual([0, 1, 2, 3]);
    const movedTo = join(dir, `${legacyFolderPrefix}2026-12-02T00-00-00-000Z`);
    expect(result?.movedTo).toBe(movedTo);
    expect(readdirSync(movedTo).sort()).toEqual(oldFiles);
    expect(readdirSync(dir).filter((n) => oldFiles.includes(n))).toEqual([]);
    expect(messages.at(-1)).toContain(`the old files are kept in ${movedTo}`);

    const [s0, s1, s2, s3] = await snapshots(storage);
    const state = (s: ShardSnapshot | undefined, type: string, key: string) =>
      s?.instances.find((i) => i.type === type && i.key === key)?.state ?? new Uint8Array();
    // Shard 0: alice's cart (snapshot + records after it), her reminder, her idempotency memo, an unacknowledged send.
    expect(fromBinary(CartStateSchema, state(s0, "shop.v1.Cart", "alice")).items).toEqual({ apple: 2, pear: 1 });
    expect(s0?.pending.map((e) => e.handler)).toEqual(["RemindAbandoned"]);
    const k1 = memoId({ kind: "idempotency", target: { type: "shop.v1.Cart", key: "alice" }, handler: "AddItem", idempotencyKey: "k1" });
    expect(s0?.memos.map((m) => m.id)).toContain(k1);
    expect(s0?.outbox.map((o) => [o.sequence, o.envelope?.target?.key, o.envelope?.handler])).toEqual([[3n, "dave", "RemindAbandoned"]]);
    expect(s0?.nextOutboxSequence).toBe(4n);
    // Shard 1: melon's stock, from its snapshot alone.
    expect(fromBinary(InventoryStateSchema, state(s1, "shop.v1.Inventory", "melon")).available).toBe(10);
    // Shard 2: stock after three reservations, dave's cart and the watermark of his reminder (sent to himself).
    expect(fromBinary(InventoryStateSchema, state(s2, "shop.v1.Inventory", "apple")).available).toBe(7);
    expect(fromBinary(InventoryStateSchema, state(s2, "shop.v1.Inventory", "pear")).available).toBe(9);
    expect(fromBinary(CartStateSchema, state(s2, "shop.v1.Cart", "dave")).items).toEqual({ apple: 1 });
    expect(s2?.watermarks.map((w) => w.shard)).toEqual([2]);
    // Shard 3: bob's AddItem, accepted and not yet run to the end.
    expect(s3?.instances).toEqual([]);
    expect(s3?.pending.map((e) => `${e.target?.key}.${e.handler}`)).toEqual(["bob.AddItem"]);
    await storage.close();
  });

  it("does nothing in a directory without old files", async () => {
    const empty = mkdtempSync(join(tmpdir(), "shoal-legacy-empty-"));
    dirs.push(empty);
    expect(await upgradeLegacyDirectory(empty, createMemoryStorage())).toBeUndefined();
    expect(await upgradeLegacyDirectory(join(empty, "missing"), createMemoryStorage())).toBeUndefined();
  });

  it("stopped after any step, converts again or finishes the move on the next start, to the same tables", async () => {
    const reference = createMemoryStorage();
    await upgradeLegacyDirectory(copy(), reference);
    const expected = await snapshots(reference);

    // 4 shards converted, then 3 files moved.
    const steps = shards + oldFiles.length;
    for (let stopAfter = 1; stopAfter <= steps; stopAfter++) {
      dir = copy();
      const storage = createMemoryStorage();
      // What a crash in the middle of writing a shard leaves: the marker of
      // the conversion, and a part of the shard (here an entry it does not write).
      writeFileSync(join(dir, marker), "");
      const store = await storage.openShard(2, "crashed");
      await store.write([put("instance", "shop.v1.Cart/zed", create(InstanceStateSchema, { type: "shop.v1.Cart", key: "zed" }))], [])
        .durable;
      await store.close();

      let done = 0;
      const stop = new Error("stopped");
      const first = upgradeLegacyDirectory(dir, storage, {
        afterStep: () => {
          done += 1;
          if (done === stopAfter) throw stop;
        },
      });
      await expect(first, `stopped after step ${stopAfter}`).rejects.toBe(stop);
      const second = await upgradeLegacyDirectory(dir, storage);
      // Stopped after the last move, it had done everything.
      const again = stopAfter <= shards ? [0, 1, 2, 3] : stopAfter < steps ? [] : undefined;
      expect(second?.shards, `stopped after step ${stopAfter}`).toEqual(again);
      expect(await snapshots(storage), `stopped after step ${stopAfter}`).toEqual(expected);
      const folders = readdirSync(dir).filter((n) => n.startsWith(legacyFolderPrefix));
      // The folder is made once every shard is converted: an earlier stop leaves none.
      expect(folders.length, `stopped after step ${stopAfter}`).toBe(1);
      expect(readdirSync(join(dir, folders[0] ?? "")).sort()).toEqual(oldFiles);
      expect(readdirSync(dir).filter((n) => oldFiles.includes(n) || n === marker)).toEqual([]);
      // Nothing left to do.
      expect(await upgradeLegacyDirectory(dir, storage)).toBeUndefined();
    }
  });

  it("refuses to convert over a store that holds data it did not write", async () => {
    const storage = createMemoryStorage();
    const { movedTo } = (await upgradeLegacyDirectory(dir, storage)) ?? { movedTo: "" };
    const converted = await snapshots(storage);
    // The old files put back beside the store, say to go back to the old version without removing data.mdb.
    for (const name of oldFiles) renameSync(join(movedTo, name), join(dir, name));
    await expect(upgradeLegacyDirectory(dir, storage)).rejects.toThrow(
      `storage directory ${dir} holds both a log in the old format (MANIFEST, wal-*.log, snapshots/) and a store with data of shard 0: converting the log would overwrite it`,
    );
    expect(await snapshots(storage)).toEqual(converted);
    expect(
      readdirSync(dir)
        .filter((n) => oldFiles.includes(n))
        .sort(),
    ).toEqual(oldFiles);
    expect(existsSync(join(dir, marker))).toBe(false);
  });

  it("refuses a damaged log with the file named, and leaves the directory as it was", async () => {
    const segment = join(dir, "wal-00000000000000000001.log");
    const bytes = readFileSync(segment);
    // A byte in the middle of the log: not a torn write at its end.
    bytes[Math.floor(bytes.length / 2)]! ^= 0xff;
    writeFileSync(segment, bytes);
    const storage = createMemoryStorage();
    const upgrade = upgradeLegacyDirectory(dir, storage);
    await expect(upgrade).rejects.toThrow(StorageError);
    await expect(upgrade).rejects.toThrow(`log segment ${segment} is corrupt at byte`);
    expect(existsSync(join(dir, "MANIFEST"))).toBe(true);
    expect(readdirSync(dir).filter((n) => n.startsWith(legacyFolderPrefix))).toEqual([]);
  });

  it("refuses a directory whose manifest lists a snapshot that is missing", async () => {
    rmSync(join(dir, "snapshots", readdirSync(join(dir, "snapshots"))[0] ?? ""));
    await expect(upgradeLegacyDirectory(dir, createMemoryStorage())).rejects.toThrow(/the snapshot of shard 0 .* is missing/);
  });
});
