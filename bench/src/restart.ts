// `npm run bench:restart`: how long a node takes to restart after a long run
// on the durable local store, and how large its store is.
//
//   node bench/dist/restart.js [--ops 1000000] [--concurrency 512] [--keys 100000] [--shards 64]
//                              [--dir <parent>]
//
// Runs `--ops` adds of the bench counter (in process, through an in-memory
// Connect transport: no HTTP) on `createLocalStorage({ fsync: true })`, closes
// the node, then times createLocalStorage + createRuntime + start until every
// shard serves, and prints that with the store's bytes on disk. It
// checks the restarted node holds every acknowledged add.
import { mkdtempSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import { createRouterTransport } from "@connectrpc/connect";
import { createLocalStorage, createRuntime, type Runtime } from "@shoal/runtime";
import { createFunctionClient, implement } from "@shoal/sdk";
import { counter } from "./counter.js";
import { CounterFunction } from "./gen/bench/v1/counter_shoal.js";

const { values } = parseArgs({
  options: {
    ops: { type: "string", default: "1000000" },
    concurrency: { type: "string", default: "512" },
    keys: { type: "string", default: "100000" },
    shards: { type: "string", default: "64" },
    dir: { type: "string", default: tmpdir() },
  },
});
const number = (name: keyof typeof values): number | undefined => {
  const text = values[name];
  if (text === undefined) return undefined;
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value <= 0) throw new Error(`--${name}: expected a positive integer, got ${text}`);
  return value;
};
const ops = number("ops") as number;
const concurrency = number("concurrency") as number;
const keys = number("keys") as number;
const shards = number("shards") as number;
const directory = mkdtempSync(join(values.dir as string, "shoal-restart-"));

async function boot(): Promise<Runtime> {
  const runtime = createRuntime({
    functions: [implement(CounterFunction, counter)],
    storage: await createLocalStorage({ directory, fsync: true }),
    shards,
    logger: "silent",
  });
  await runtime.start();
  return runtime;
}

function bytesIn(path: string, pattern: RegExp): number {
  return readdirSync(path)
    .filter((name) => pattern.test(name))
    .reduce((total, name) => total + statSync(join(path, name)).size, 0);
}

const mb = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(1)} MB`;

try {
  let runtime = await boot();
  const client = createFunctionClient(CounterFunction, createRouterTransport(runtime.routes));
  let next = 0;
  const started = performance.now();
  let reported = started;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      for (let op = next++; op < ops; op = next++) {
        await client.add({ key: `k${op % keys}`, delta: 1n });
        if (performance.now() - reported > 10_000) {
          reported = performance.now();
          process.stderr.write(`  ${op} ops, store ${mb(bytesIn(directory, /\.mdb$/))}\n`);
        }
      }
    }),
  );
  const runSeconds = (performance.now() - started) / 1000;
  await runtime.close();
  const storeBytes = bytesIn(directory, /\.mdb$/);

  const restartStart = performance.now();
  runtime = await boot();
  const restartMs = performance.now() - restartStart;
  const total = runtime.instancesOf(CounterFunction).reduce((sum, { state }) => sum + state.value, 0n);
  await runtime.close();
  if (total !== BigInt(ops)) throw new Error(`after the restart the counters add up to ${total}, not ${ops}`);

  console.log(
    [
      `ops:            ${ops} (concurrency ${concurrency}, ${keys} keys, ${shards} shards, fsync) in ${runSeconds.toFixed(1)} s (${Math.round(ops / runSeconds)} ops/s)`,
      `store on disk:  ${mb(storeBytes)}`,
      `restart:        ${restartMs.toFixed(0)} ms (createLocalStorage + createRuntime + start, until every shard serves)`,
      "check:          every acknowledged add is there after the restart",
    ].join("\n"),
  );
} finally {
  rmSync(directory, { recursive: true, force: true });
}
