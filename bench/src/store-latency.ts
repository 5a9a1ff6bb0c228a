// The durable store's latency at C=1 against the disk's floor, side by side:
//
//   node bench/dist/store-latency.js [--rounds 20] [--per 100] [--dir <parent>]
//
// In alternating slices of `--per` operations, `--rounds` times:
// - store: one write of two entries (about 50 bytes, as a counter's commit) to
//   `createLocalStorage({ fsync: true })`, awaited until `durable`;
// - floor: what LMDB's commit of it must do on disk at the least: a 4 KiB page
//   written and fdatasync'ed, then a meta page written through an O_DSYNC
//   descriptor (LMDB's overlapping sync flushes the data, then the meta that
//   says it is flushed, in that order: two device flushes);
// - one flush: the 4 KiB page and fdatasync alone.
// Prints p25, p50 and p90 of each. The store minus the floor is what the store
// adds on the way: its transaction, LMDB's write thread and the event loop.
import { closeSync, constants, fdatasyncSync, mkdtempSync, openSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { createLocalStorage } from "@shoal/runtime";

const { values } = parseArgs({
  options: {
    rounds: { type: "string", default: "20" },
    per: { type: "string", default: "100" },
    dir: { type: "string", default: tmpdir() },
  },
});
const positive = (name: "rounds" | "per"): number => {
  const value = Number(values[name]);
  if (!Number.isSafeInteger(value) || value <= 0) throw new Error(`--${name}: expected a positive integer, got ${values[name]}`);
  return value;
};
const rounds = positive("rounds");
const per = positive("per");
const directory = mkdtempSync(join(values.dir as string, "shoal-store-latency-"));

const storage = await createLocalStorage({ directory: join(directory, "store"), fsync: true });
const store = await storage.openShard(0, "bench");
const value = new Uint8Array(40).fill(7);
let n = 0;
const file = join(directory, "floor");
const fd = openSync(file, "w+");
const metaFd = openSync(file, constants.O_RDWR | constants.O_DSYNC);
const page = Buffer.alloc(4096, 1);
for (let i = 0; i < 64; i++) writeSync(fd, page, 0, page.length, i * page.length);
fdatasyncSync(fd);

const kinds: { name: string; run: () => Promise<void> | void; samples: number[] }[] = [
  {
    name: "store: write -> durable",
    run: async () => {
      n++;
      const changes = [
        { table: "instance" as const, key: "counter/k", value },
        { table: "memo" as const, key: `m${n % 100}`, value },
      ];
      await store.write(changes, []).durable;
    },
    samples: [],
  },
  {
    name: "floor: page + fdatasync + O_DSYNC meta",
    run: () => {
      writeSync(fd, page, 0, page.length, (8 + (n++ % 32)) * page.length);
      fdatasyncSync(fd);
      writeSync(metaFd, page, 0, 256, 2048);
    },
    samples: [],
  },
  {
    name: "one flush: page + fdatasync",
    run: () => {
      writeSync(fd, page, 0, page.length, (8 + (n++ % 32)) * page.length);
      fdatasyncSync(fd);
    },
    samples: [],
  },
];

try {
  for (let i = 0; i < 50; i++) for (const kind of kinds) await kind.run();
  for (let round = 0; round < rounds; round++) {
    for (let k = 0; k < kinds.length; k++) {
      const kind = kinds[(round + k) % kinds.length] as (typeof kinds)[number];
      for (let i = 0; i < per; i++) {
        const start = process.hrtime.bigint();
        await kind.run();
        kind.samples.push(Number(process.hrtime.bigint() - start) / 1000);
      }
    }
  }
  const at = (sorted: number[], p: number) => (sorted[Math.floor(sorted.length * p)] as number).toFixed(0);
  console.log(`${rounds} rounds of ${per} each, in ${directory}`);
  for (const kind of kinds) {
    const sorted = [...kind.samples].sort((a, b) => a - b);
    console.log(`${kind.name.padEnd(40)} p25 ${at(sorted, 0.25)} µs, p50 ${at(sorted, 0.5)} µs, p90 ${at(sorted, 0.9)} µs`);
  }
} finally {
  closeSync(fd);
  closeSync(metaFd);
  await storage.close();
  rmSync(directory, { recursive: true, force: true });
}
