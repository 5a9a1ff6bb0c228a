import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { once } from "node:events";
import { mkdir, mkdtemp, readdir, readFile, rm, stat, truncate, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { create } from "@bufbuild/protobuf";
import { type LogRecord, LogRecordSchema, ShardSnapshotSchema } from "@shoal/sdk/internal";
import { afterEach, describe, expect, it } from "vitest";
import { describeStorageConformance } from "../storage.conformance.js";
import type { RecoveredShard, StorageBackend } from "../storage.js";
import { StorageError } from "../storage.js";
import { createLocalStorage, type LocalStorageOptions } from "./local-storage.js";

const repositoryRoot = fileURLToPath(new URL("../../../../../", import.meta.url));
const localStorageModule = fileURLToPath(new URL("./local-storage.ts", import.meta.url));

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function temporaryDirectory(): Promise<string> {
  const directory = await mkdtemp(join(tmpdir(), "shoal-local-"));
  cleanups.push(() => rm(directory, { recursive: true, force: true }));
  return directory;
}

/** Opens a backend that the test's cleanup closes. */
async function open(options: LocalStorageOptions): Promise<StorageBackend> {
  const backend = await createLocalStorage(options);
  cleanups.push(() => backend.close());
  return backend;
}

describeStorageConformance("local", async () => {
  const directory = await mkdtemp(join(tmpdir(), "shoal-local-"));
  // Small segments, so the suite's data spans several and truncation shows.
  const options = { directory, segmentBytes: 4096 };
  return {
    backend: await createLocalStorage(options),
    reopen: () => createLocalStorage(options),
    async tearLastRecord() {
      const last = (await segments(directory)).at(-1) as string;
      await truncate(last, (await stat(last)).size - 5);
    },
    async logBytes() {
      let total = 0;
      for (const path of await segments(directory)) total += (await stat(path)).size;
      return total;
    },
    cleanup: () => rm(directory, { recursive: true, force: true }),
  };
});

describe("local storage", () => {
  it("refuses a directory it cannot create, naming it and the OS error", async () => {
    // Tests may run as root, for whom chmod does not stop writes, so these use
    // paths no one can create: under a regular file (ENOTDIR) and under /proc,
    // which refuses new entries. The chmod case runs only for other users.
    const base = await temporaryDirectory();
    const file = join(base, "a-file");
    await writeFile(file, "");
    const underFile = join(file, "store");
    await expect(createLocalStorage({ directory: underFile })).rejects.toThrow(StorageError);
    await expect(createLocalStorage({ directory: underFile })).rejects.toThrow(new RegExp(`storage directory ${underFile}: .*ENOTDIR`));
    await expect(createLocalStorage({ directory: "/proc/shoal-store" })).rejects.toThrow(
      /storage directory \/proc\/shoal-store: .*(ENOENT|EACCES|EROFS)/,
    );
    if (process.getuid?.() !== 0) {
      const readOnly = join(base, "read-only");
      await mkdir(readOnly, { mode: 0o500 });
      await expect(createLocalStorage({ directory: readOnly })).rejects.toThrow(/permission denied \(EACCES\)/);
    }
  });

  it("refuses invalid options", async () => {
    const directory = await temporaryDirectory();
    await expect(createLocalStorage({ directory, segmentBytes: 0 })).rejects.toThrow(/segmentBytes/);
    await expect(createLocalStorage({ directory: "" })).rejects.toThrow(/directory is required/);
  });

  it("refuses a second open of a directory in use by this process", async () => {
    const directory = await temporaryDirectory();
    await open({ directory });
    await expect(createLocalStorage({ directory })).rejects.toThrow(
      `storage directory ${directory} is in use by the process with pid ${process.pid}`,
    );
  });

  it("refuses a directory locked by another live process and takes over once it is SIGKILLed", async () => {
    const directory = await temporaryDirectory();
    const child = startChild(`
      const storage = await createLocalStorage({ directory: ${JSON.stringify(directory)} });
      const log = await storage.openShard(0, "child");
      for (let i = 0; i < 20; i++) await log.append([record("k" + i, 50)]).durable;
      console.log("ready");
      setInterval(() => {}, 1000);
    `);
    await waitForLine(child, "ready");
    await expect(createLocalStorage({ directory })).rejects.toThrow(
      `storage directory ${directory} is in use by the process with pid ${child.pid}`,
    );

    child.kill("SIGKILL");
    await once(child, "exit");
    const storage = await open({ directory });
    expect(await readFile(join(directory, "LOCK"), "utf8")).toBe(`${process.pid}\n`);
    const log = await storage.openShard(0, "parent");
    expect(log.epoch).toBe(2n);
    expect(ids(await log.recover())).toEqual(Array.from({ length: 20 }, (_, i) => `k${i}`));
  });

  it("releases the lock on close", async () => {
    const directory = await temporaryDirectory();
    const storage = await createLocalStorage({ directory });
    await storage.close();
    // The file stays; the OS lock on it is gone, and so is the pid.
    expect(await readFile(join(directory, "LOCK"), "utf8")).toBe("");
    await (await createLocalStorage({ directory })).close();
  });

  it("starts again after a SIGKILL as pid 1 in a fresh pid namespace, as a restarted container does", async () => {
    const directory = await temporaryDirectory();
    const body = (ids: string) => `
      const storage = await createLocalStorage({ directory: ${JSON.stringify(directory)} });
      const log = await storage.openShard(0, "container");
      for (const id of ${ids}) await log.append([record(id, 10)]).durable;
      console.log("ready as pid " + process.pid);
      setInterval(() => {}, 1000);
    `;
    for (const round of ["a", "b"]) {
      const child = startChild(body(JSON.stringify([round])), { pidNamespace: true });
      await waitForLine(child, "ready as pid 1");
      // Killing the namespace's pid 1 (not unshare, its parent) is the container's process dying.
      const [pidOne] = (await readFile(`/proc/${child.pid}/task/${child.pid}/children`, "utf8")).trim().split(" ");
      process.kill(Number(pidOne), "SIGKILL");
      await once(child, "exit");
    }
    const storage = await open({ directory });
    expect(ids(await (await storage.openShard(0, "parent")).recover())).toEqual(["a", "b"]);
  });

  it("fails the group on a full disk (real ENOSPC on a small tmpfs), keeps what was durable and carries on", async (context) => {
    const mountPoint = await temporaryDirectory();
    if (!mountTmpfs(mountPoint, "size=256k")) return context.skip("needs root and mount (a small tmpfs)");
    cleanups.push(async () => {
      execFileSync("umount", [mountPoint]);
    });
    const filler = join(mountPoint, "filler");
    await writeFile(filler, Buffer.alloc(64 * 1024));
    const directory = join(mountPoint, "store");
    let storage = await open({ directory, segmentBytes: 1024 * 1024 });
    const log = await storage.openShard(0, "node-a");

    const durable: string[] = [];
    let failure: unknown;
    for (let i = 0; i < 200 && failure === undefined; i++) {
      try {
        await log.append([record(`r${i}`, 4000)]).durable;
        durable.push(`r${i}`);
      } catch (error) {
        failure = error;
      }
    }
    expect(failure).toBeInstanceOf(StorageError);
    expect(String(failure)).toMatch(/writing log segment .*wal-\d{20}\.log failed: disk full \(ENOSPC\)/);
    expect(durable.length).toBeGreaterThan(10);
    // Later records of this handle might depend on the lost one.
    expect(() => log.append([record("after", 10)])).toThrow(/earlier append of this log failed/);

    await rm(filler);
    const other = await storage.openShard(1, "node-a");
    await other.append([record("small", 10)]).durable;
    const again = await storage.openShard(0, "node-b");
    expect(ids(await again.recover())).toEqual(durable);
    await again.append([record("after-full", 10)]).durable;

    await storage.close();
    storage = await open({ directory });
    expect(ids(await (await storage.openShard(0, "node-c")).recover())).toEqual([...durable, "after-full"]);
    expect(ids(await (await storage.openShard(1, "node-c")).recover())).toEqual(["small"]);
  });

  it("fails the group on a write error (real EFBIG under a file size limit), without root", async () => {
    // RLIMIT_FSIZE makes the kernel cut a write short and then fail it, as a
    // full disk does; `ulimit -f` counts 512-byte blocks in dash (32 KiB here).
    const directory = await temporaryDirectory();
    const child = startChild(
      `
      const storage = await createLocalStorage({ directory: ${JSON.stringify(directory)}, segmentBytes: 1 << 20 });
      const log = await storage.openShard(0, "child");
      const durable = [];
      let failure;
      for (let i = 0; i < 100 && failure === undefined; i++) {
        try {
          await log.append([record("big" + i, 1900)]).durable;
          durable.push("big" + i);
        } catch (error) {
          failure = error;
        }
      }
      let refused;
      try { log.append([record("after", 10)]); } catch (error) { refused = error.message; }
      const again = await storage.openShard(0, "child-again");
      const recovered = (await again.recover()).records.filter((r) => r.record.kind.case === "input").length;
      const other = await storage.openShard(1, "child");
      await other.append([record("small", 10)]).durable;
      await storage.close();
      console.log(JSON.stringify({ durable, failure: failure && failure.message, name: failure && failure.name, refused, recovered }));
    `,
      { fileSizeLimitBlocks: 64 },
    );
    const [code] = await once(child, "exit");
    expect(code, child.stderrText).toBe(0);
    const result = JSON.parse(child.stdoutText);
    expect(result.name).toBe("StorageError");
    expect(result.failure).toMatch(/writing log segment .*wal-\d{20}\.log failed: file too large \(EFBIG\)/);
    expect(result.refused).toMatch(/earlier append of this log failed/);
    expect(result.durable.length).toBeGreaterThan(5);
    expect(result.recovered).toBe(result.durable.length);

    // The segment ends with the last durable frame: nothing to cut at open.
    const [segment] = await segments(directory);
    const size = (await stat(segment as string)).size;
    const storage = await open({ directory });
    expect((await stat(segment as string)).size).toBe(size);
    expect(ids(await (await storage.openShard(0, "parent")).recover())).toEqual(result.durable);
    expect(ids(await (await storage.openShard(1, "parent")).recover())).toEqual(["small"]);
  });

  it("refuses to open with a corrupt snapshot, naming the file", async () => {
    const directory = await temporaryDirectory();
    const storage = await createLocalStorage({ directory });
    const log = await storage.openShard(0, "node-a");
    const result = log.append([record("a", 10)]);
    await result.durable;
    await log.writeSnapshot(create(ShardSnapshotSchema, { shard: 0, sequence: result.lastSequence }));
    await storage.close();

    const [name] = await readdir(join(directory, "snapshots"));
    const path = join(directory, "snapshots", name as string);
    await flipByte(path, 12);
    await expect(createLocalStorage({ directory })).rejects.toThrow(`snapshot ${path} is corrupt: checksum mismatch`);
    // A failed open leaves no lock behind: the next open fails the same way.
    await expect(createLocalStorage({ directory })).rejects.toThrow(`snapshot ${path} is corrupt: checksum mismatch`);
  });

  it("refuses to open with a damaged frame in a segment that is not the last, naming file and offset", async () => {
    const directory = await temporaryDirectory();
    const storage = await createLocalStorage({ directory, segmentBytes: 1024 });
    const log = await storage.openShard(0, "node-a");
    for (let i = 0; i < 30; i++) await log.append([record(`r${i}`, 100)]).durable;
    await storage.close();

    const [first, ...rest] = await segments(directory);
    expect(rest.length).toBeGreaterThan(1);
    const frames = frameOffsets(await readFile(first as string));
    const damaged = frames[2] as number;
    await flipByte(first as string, damaged + 30);
    await expect(createLocalStorage({ directory })).rejects.toThrow(
      `log segment ${first} is corrupt at byte ${damaged}: checksum mismatch`,
    );
  });

  it("refuses to open with a damaged frame followed by later groups in the last segment", async () => {
    const directory = await temporaryDirectory();
    const storage = await createLocalStorage({ directory });
    const log = await storage.openShard(0, "node-a");
    for (let i = 0; i < 10; i++) await log.append([record(`r${i}`, 100)]).durable;
    await storage.close();

    const [segment] = await segments(directory);
    const frames = frameOffsets(await readFile(segment as string));
    // Zeroing the length makes the frame boundaries after it unknowable.
    const buf = await readFile(segment as string);
    buf.fill(0, frames[3] as number, (frames[3] as number) + 4);
    await writeFile(segment as string, buf);
    await expect(createLocalStorage({ directory })).rejects.toThrow(
      new RegExp(`log segment ${segment} is corrupt at byte ${frames[3]}: .*followed by durable records`),
    );
  });

  it("cuts off a torn tail: garbage, zeros, or a group whose middle never reached the disk", async () => {
    const directory = await temporaryDirectory();
    let storage = await createLocalStorage({ directory });
    let log = await storage.openShard(0, "node-a");
    await log.append([record("a", 100)]).durable;
    await log.append([record("b", 100), record("c", 100), record("d", 100)]).durable;
    await storage.close();
    const [segment] = (await segments(directory)) as [string];
    const buf = await readFile(segment);
    const frames = frameOffsets(buf);

    // Pages of the last group written out of order: its second frame is zeros.
    const torn = Buffer.from(buf);
    torn.fill(0, frames.at(-2) as number, frames.at(-1) as number);
    await writeFile(segment, torn);
    storage = await createLocalStorage({ directory });
    log = await storage.openShard(0, "node-b");
    expect(ids(await log.recover())).toEqual(["a", "b"]);
    await log.append([record("e", 100)]).durable;
    await storage.close();

    for (const tail of [Buffer.alloc(4096), Buffer.from(Array.from({ length: 3000 }, (_, i) => (i * 7919) % 251))]) {
      const before = (await stat(segment)).size;
      await writeFile(segment, tail, { flag: "a" });
      storage = await createLocalStorage({ directory });
      expect((await stat(segment)).size).toBe(before);
      log = await storage.openShard(0, "node-c");
      expect(ids(await log.recover())).toEqual(["a", "b", "e"]);
      await storage.close();
    }
  });

  it("warns with the bytes dropped when it cuts off a torn tail", async () => {
    const directory = await temporaryDirectory();
    const storage = await createLocalStorage({ directory });
    const log = await storage.openShard(0, "node-a");
    await log.append([record("a", 100)]).durable;
    await storage.close();
    const [segment] = (await segments(directory)) as [string];
    const size = (await stat(segment)).size;
    await writeFile(segment, Buffer.alloc(37, 9), { flag: "a" });
    const warnings: string[] = [];
    await (await createLocalStorage({ directory, onWarning: (message) => warnings.push(message) })).close();
    expect(warnings).toEqual([expect.stringContaining(`log segment ${segment}: cut off a torn write of 37 bytes at byte ${size}`)]);
  });

  describe("refuses to start on damage that would lose acknowledged records, naming the file", () => {
    /**
     * Shards 0 and 1 write 40 records over several segments; shard 0 snapshots
     * after its 30th, shard 1 never, so no segment is dropped.
     */
    async function fill(directory: string, options: { snapshotShard1?: boolean } = {}) {
      const storage = await createLocalStorage({ directory, segmentBytes: 1024 });
      const logs = [await storage.openShard(0, "node-a"), await storage.openShard(1, "node-a")];
      for (let i = 0; i < 40; i++) {
        const result = logs[i % 2]?.append([record(`r${i}`, 100)]);
        await result?.durable;
        if (i === 30) await logs[0]?.writeSnapshot(create(ShardSnapshotSchema, { shard: 0, sequence: result?.lastSequence }));
        if (i === 39 && options.snapshotShard1) {
          await logs[1]?.writeSnapshot(create(ShardSnapshotSchema, { shard: 1, sequence: result?.lastSequence }));
          await logs[0]?.writeSnapshot(create(ShardSnapshotSchema, { shard: 0, sequence: result?.lastSequence }));
        }
      }
      await storage.close();
      return segments(directory);
    }

    it("a deleted first segment", async () => {
      const directory = await temporaryDirectory();
      const [first] = await fill(directory);
      await rm(first as string);
      await expect(createLocalStorage({ directory })).rejects.toThrow(`log segment ${first} is missing`);
    });

    it("a deleted middle segment", async () => {
      const directory = await temporaryDirectory();
      const [, middle] = await fill(directory);
      await rm(middle as string);
      await expect(createLocalStorage({ directory })).rejects.toThrow(`log segment ${middle} is missing`);
    });

    it("a deleted last segment", async () => {
      const directory = await temporaryDirectory();
      const last = (await fill(directory)).at(-1) as string;
      await rm(last);
      await expect(createLocalStorage({ directory })).rejects.toThrow(`log segment ${last} is missing`);
    });

    it("every segment deleted", async () => {
      const directory = await temporaryDirectory();
      const all = await fill(directory);
      for (const segment of all) await rm(segment);
      await expect(createLocalStorage({ directory })).rejects.toThrow(`log segment ${all[0]} is missing`);
    });

    it("a deleted snapshot whose log was already dropped", async () => {
      const directory = await temporaryDirectory();
      const [oldest] = await fill(directory, { snapshotShard1: true });
      const [name] = (await readdir(join(directory, "snapshots"))).filter((n) => n.startsWith("shard-1-"));
      // The snapshots covered the older segments, which are gone.
      expect(oldest).not.toMatch(/wal-0+1\.log$/);
      await rm(join(directory, "snapshots", name as string));
      await expect(createLocalStorage({ directory })).rejects.toThrow(
        `the snapshot of shard 1 (${join(directory, "snapshots", "shard-1-*.snap")}) is missing`,
      );
    });

    it("a log cut, at a frame boundary, below a snapshot", async () => {
      const directory = await temporaryDirectory();
      const storage = await createLocalStorage({ directory });
      const log = await storage.openShard(0, "node-a");
      let result = log.append([record("a", 100)]);
      for (let i = 0; i < 5; i++) result = log.append([record(`b${i}`, 100)]);
      await result.durable;
      await log.writeSnapshot(create(ShardSnapshotSchema, { shard: 0, sequence: result.lastSequence }));
      await storage.close();
      const [segment] = (await segments(directory)) as [string];
      const frames = frameOffsets(await readFile(segment));
      await truncate(segment, frames[2] as number);
      await expect(createLocalStorage({ directory })).rejects.toThrow(
        new RegExp(
          `the log ends at sequence 2 in ${segment}, but snapshot .*shard-0-0+${result.lastSequence}\\.snap is at sequence ${result.lastSequence}`,
        ),
      );
    });

    it("a deleted MANIFEST", async () => {
      const directory = await temporaryDirectory();
      await fill(directory);
      await rm(join(directory, "MANIFEST"));
      await expect(createLocalStorage({ directory })).rejects.toThrow(
        `storage directory ${directory} holds data but no ${join(directory, "MANIFEST")}`,
      );
    });
  });

  it("keeps only the latest snapshot and ignores an unfinished one", async () => {
    const directory = await temporaryDirectory();
    let storage = await createLocalStorage({ directory });
    const log = await storage.openShard(4, "node-a");
    const first = log.append([record("a", 10)]);
    await first.durable;
    await log.writeSnapshot(create(ShardSnapshotSchema, { shard: 4, sequence: first.lastSequence }));
    const second = log.append([record("b", 10)]);
    await second.durable;
    await log.writeSnapshot(create(ShardSnapshotSchema, { shard: 4, sequence: second.lastSequence }));
    await storage.close();
    const snapshotDirectory = join(directory, "snapshots");
    expect(await readdir(snapshotDirectory)).toEqual([`shard-4-${String(second.lastSequence).padStart(20, "0")}.snap`]);

    // A crash in the middle of a snapshot write leaves a temporary file.
    await writeFile(join(snapshotDirectory, "shard-4-00000000000000000099.snap.tmp"), "partial");
    storage = await open({ directory });
    expect(await readdir(snapshotDirectory)).toHaveLength(1);
    const recovered = await (await storage.openShard(4, "node-b")).recover();
    expect(recovered.snapshot?.sequence).toBe(second.lastSequence);
    expect(ids(recovered)).toEqual([]);
  });

  it("recovers again in the same process by reading the records back from several segments", async () => {
    const directory = await temporaryDirectory();
    const storage = await open({ directory, segmentBytes: 1024 });
    const [zero, one] = await Promise.all([storage.openShard(0, "node-a"), storage.openShard(1, "node-a")]);
    // The first recovery of each shard takes the records read at open.
    await Promise.all([zero.recover(), one.recover()]);
    let middle = 0n;
    for (let i = 0; i < 40; i++) {
      const result = zero.append([record(`z${i}a`, 60), record(`z${i}b`, 60)]);
      await one.append([record(`o${i}`, 60)]).durable;
      await result.durable;
      if (i === 19) middle = result.lastSequence;
    }
    await zero.writeSnapshot(create(ShardSnapshotSchema, { shard: 0, sequence: middle }));
    expect((await segments(directory)).length).toBeGreaterThan(3);

    const recoveredZero = await (await storage.openShard(0, "node-b")).recover();
    expect(recoveredZero.snapshot?.sequence).toBe(middle);
    expect(ids(recoveredZero)).toEqual(Array.from({ length: 20 }, (_, i) => [`z${i + 20}a`, `z${i + 20}b`]).flat());
    const recoveredOne = await (await storage.openShard(1, "node-b")).recover();
    expect(ids(recoveredOne)).toEqual(Array.from({ length: 40 }, (_, i) => `o${i}`));
  });

  it("works with fsync off", async () => {
    const directory = await temporaryDirectory();
    let storage = await createLocalStorage({ directory, fsync: false });
    const log = await storage.openShard(0, "node-a");
    await log.append([record("a", 10)]).durable;
    await storage.close();
    storage = await open({ directory, fsync: false });
    expect(ids(await (await storage.openShard(0, "node-b")).recover())).toEqual(["a"]);
  });
});

function record(id: string, size: number): LogRecord {
  return create(LogRecordSchema, {
    kind: { case: "input", value: { envelope: { id, payload: new Uint8Array(size).fill(1) } } },
  });
}

function ids(recovered: RecoveredShard): string[] {
  return recovered.records.flatMap(({ record }) => (record.kind.case === "input" ? [record.kind.value.envelope?.id ?? ""] : []));
}

async function segments(directory: string): Promise<string[]> {
  return (await readdir(directory))
    .filter((name) => /^wal-\d{20}\.log$/.test(name))
    .sort()
    .map((name) => join(directory, name));
}

/** Start offsets of the frames of a segment, read from their length fields. */
function frameOffsets(buf: Buffer): number[] {
  const offsets: number[] = [];
  for (let at = 0; at + 8 <= buf.length; at += 8 + buf.readUInt32LE(at)) offsets.push(at);
  return offsets;
}

async function flipByte(path: string, offset: number): Promise<void> {
  const buf = await readFile(path);
  buf[offset] = (buf[offset] ?? 0) ^ 0xff;
  await writeFile(path, buf);
}

function mountTmpfs(mountPoint: string, options: string): boolean {
  if (process.getuid?.() !== 0) return false;
  try {
    execFileSync("mount", ["-t", "tmpfs", "-o", options, "tmpfs", mountPoint], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

interface Child extends ChildProcess {
  stdoutText: string;
  stderrText: string;
}

/**
 * Runs `body` in a separate Node process (through tsx, from this source tree)
 * with `createLocalStorage` and a `record(id, size)` helper in scope.
 */
function startChild(body: string, options: { fileSizeLimitBlocks?: number; pidNamespace?: boolean } = {}): Child {
  const script = `
    const { create } = await import("@bufbuild/protobuf");
    const { LogRecordSchema } = await import("@shoal/sdk/internal");
    const { createLocalStorage } = await import(${JSON.stringify(localStorageModule)});
    const record = (id, size) => create(LogRecordSchema, {
      kind: { case: "input", value: { envelope: { id, payload: new Uint8Array(size).fill(1) } } },
    });
    ${body}
  `;
  const node = [process.execPath, "--import", "tsx", "--input-type=module", "-e", script];
  const child = (
    options.pidNamespace === true
      ? // The child is pid 1 of a new pid namespace (needs root).
        spawn("unshare", ["--pid", "--fork", "--mount-proc", ...node], { cwd: repositoryRoot })
      : options.fileSizeLimitBlocks === undefined
        ? spawn(node[0] as string, node.slice(1), { cwd: repositoryRoot })
        : spawn("/bin/sh", ["-c", `ulimit -f ${options.fileSizeLimitBlocks} && exec "$0" "$@"`, ...node], {
            cwd: repositoryRoot,
          })
  ) as Child;
  child.stdoutText = "";
  child.stderrText = "";
  child.stdout?.setEncoding("utf8").on("data", (chunk: string) => {
    child.stdoutText += chunk;
  });
  child.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
    child.stderrText += chunk;
  });
  cleanups.push(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGKILL");
      await once(child, "exit");
    }
  });
  return child;
}

async function waitForLine(child: Child, line: string): Promise<void> {
  while (!child.stdoutText.split("\n").includes(line)) {
    if (child.exitCode !== null) throw new Error(`child exited with ${child.exitCode}: ${child.stderrText}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
