// Fault storms for the exactly-once guarantee (DESIGN §7), on the bank: the
// runtime runs as its own process on the local durable store, a separate load
// client (examples/bank/src/load.ts) transfers money between accounts with
// idempotency keys and retries, and the storm stops the runtime (SIGKILL or
// SIGTERM, also while it is still recovering) or fills its disk while it runs.
// Once the fault is gone, every check of checkBank must hold. A storm's timing
// and the client's transfers follow its seed (SHOAL_STORM_SEED reproduces one).
// In remote mode the runtime is `shoal serve --config shoal.yaml` with no user
// code and the bank's functions run in an endpoint process of their own
// (examples/bank/dist/serve-functions.js); the storm SIGKILLs both.
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { closeSync, mkdirSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Child, freePort, repoRoot, shoalBin, start } from "../support/processes.js";

const bankModule = `${repoRoot}examples/bank/dist/module.js`;
const loadClient = `${repoRoot}examples/bank/dist/load.js`;
const bankEndpoint = `${repoRoot}examples/bank/dist/serve-functions.js`;

/** One storm's shape. */
export interface BankStormOptions {
  /** Printed with the summary and every failure. */
  readonly name: string;
  /** `--shards` of the runtime. */
  readonly shards: number;
  /** How many times the runtime is stopped and started again; default 0. */
  readonly stops?: number;
  /** How it is stopped: SIGKILL (a crash) or SIGTERM (a graceful stop); default SIGKILL. */
  readonly signal?: "SIGKILL" | "SIGTERM";
  /**
   * Every other stop comes soon after the start, at a random moment up to the
   * last start-up's length (at least 300 ms), so while the node still recovers.
   */
  readonly killDuringRecovery?: boolean;
  /**
   * Cycles of a full disk while the runtime keeps running: its data directory
   * is a tmpfs of `sizeMiB`, filled with a ballast file, then freed again.
   */
  readonly diskFull?: { readonly cycles: number; readonly sizeMiB: number };
  /** Default 8 accounts, 12 client workers. */
  readonly accounts?: number;
  readonly workers?: number;
  /** Default SHOAL_STORM_SEED, else random. */
  readonly seed?: number;
  /**
   * Remote mode: the functions run in a separate endpoint process, SIGKILLed
   * and restarted `endpointKills` times, interleaved at random with the
   * runtime's `stops` (SIGKILL only; no disk-full cycles).
   */
  readonly remote?: { readonly endpointKills: number };
}

/** What a storm did and every check that failed (empty when the guarantees held). */
export interface BankStormReport {
  readonly seed: number;
  readonly summary: string;
  readonly failures: string[];
}

/** A transfer as the load client reports it. */
export interface Transfer {
  id: string;
  from: string;
  to: string;
  amount: string;
}
/** The load client's summary line (examples/bank/src/load.ts). */
export interface LoadSummary {
  acknowledged: Transfer[];
  refused: Array<Transfer & { code: string; message: string }>;
  abandoned: Array<Transfer & { lastError: string }>;
  retries: number;
  retriedCodes: Record<string, number>;
  /** Answers neither retryable nor a handler's refusal (examples/bank/src/load.ts). */
  nonRetryable: Array<{ code: string; message: string; status?: number; nodeErrors: string[]; request: string; time: string }>;
}

/** mulberry32, as in the load client. */
export function seededRandom(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Runs one storm to its end and checks the bank; never throws for a failed check. */
export async function runBankStorm(options: BankStormOptions): Promise<BankStormReport> {
  const seed = options.seed ?? Number(process.env.SHOAL_STORM_SEED ?? Math.floor(Math.random() * 2 ** 32));
  const random = seededRandom(seed);
  const accounts = options.accounts ?? 8;
  const initial = 1000;
  const stops = options.stops ?? 0;
  const signal = options.signal ?? "SIGKILL";
  process.stdout.write(`storm ${options.name}: seed ${seed} (SHOAL_STORM_SEED=${seed} repeats it)\n`);

  const root = mkdtempSync(join(tmpdir(), "shoal-storm-"));
  const dataDir = join(root, "data");
  mkdirSync(dataDir);
  let runtime: Child | undefined;
  const disk = options.diskFull === undefined ? undefined : smallDisk(dataDir, options.diskFull.sizeMiB, () => runtime?.process.pid);
  const failures: string[] = [];
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const args = [
    "--port",
    String(port),
    "--data-dir",
    dataDir,
    "--shards",
    String(options.shards),
    "--log-level",
    process.env.SHOAL_STORM_LOG_LEVEL ?? "warn",
  ];
  // Every runtime's stderr, for the excerpt of a failure.
  const logs: string[] = [];
  let client: Child | undefined;
  let lastStartupMs = 300;
  const remote = options.remote;
  const endpointPort = remote === undefined ? 0 : await freePort();
  const config = remote === undefined ? undefined : remoteConfig(root, { ...options, port, dataDir, endpointPort });
  // shoal dev prints `serving <types> at <url>`, shoal serve `shoal serve: listening at <url>`.
  const ready = remote === undefined ? /serving .* at / : /shoal serve: listening at /;
  const spawnRuntime = () => {
    const child =
      config === undefined
        ? start(process.execPath, [shoalBin, "dev", bankModule, ...args])
        : start(process.execPath, [shoalBin, "serve", "--config", config]);
    child.exited.then(() => logs.push(child.stderr()));
    return child;
  };
  const serve = async () => {
    const begun = Date.now();
    runtime = spawnRuntime();
    await runtime.waitFor(ready, 120_000);
    lastStartupMs = Date.now() - begun;
  };
  let endpoint: Child | undefined;
  const startEndpoint = async () => {
    // node itself, not npm run: npm's sh -c would take the SIGKILL and leave the endpoint running.
    const child = start(process.execPath, [bankEndpoint, "--port", String(endpointPort), "--host", "127.0.0.1"]);
    endpoint = child;
    child.exited.then(() => logs.push(child.stderr()));
    await child.waitFor(/serving shoal\.v1\.FunctionService for bank\.v1\.Account at /, 120_000);
  };
  // The order of the SIGKILLs: the runtime's and the endpoint's, interleaved at random.
  const targets: Array<"runtime" | "endpoint"> = [
    ...Array.from({ length: stops }, () => "runtime" as const),
    ...Array.from({ length: remote?.endpointKills ?? 0 }, () => "endpoint" as const),
  ];
  for (let i = targets.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [targets[i], targets[j]] = [targets[j] as "runtime" | "endpoint", targets[i] as "runtime" | "endpoint"];
  }

  let stopped = 0;
  let endpointKills = 0;
  let duringRecovery = 0;
  let diskFullCycles = 0;
  let diskFullErrors = 0;
  try {
    if (remote !== undefined) await startEndpoint();
    await serve();
    client = await startLoadClient([url], { accounts, workers: options.workers ?? 12, initial, seed });

    // With killDuringRecovery every other stop hits a runtime that was just
    // spawned, at a random moment up to its last start-up's length.
    const recovering = () => options.killDuringRecovery === true && stopped % 2 === 1;
    for (const target of targets) {
      if (target === "endpoint") {
        await sleep(150 + random() * 450);
        endpoint?.process.kill("SIGKILL");
        await endpoint?.exited;
        endpointKills++;
        // Down for a while, so that the runtime also meets refused connections, not only reset ones.
        await sleep(random() * 500);
        await startEndpoint();
        continue;
      }
      if (recovering()) {
        await sleep(random() * Math.max(300, lastStartupMs * 1.2));
        if (!ready.test(runtime?.stdout() ?? "")) duringRecovery++;
      } else {
        await sleep(150 + random() * 450);
      }
      runtime?.process.kill(signal);
      const exit = await Promise.race([runtime?.exited, sleep(30_000).then(() => "still running")]);
      if (exit === "still running") {
        failures.push(`${signal} #${stopped + 1}: the runtime did not stop within 30 s; stderr:\n${tail(runtime?.stderr() ?? "")}`);
        runtime?.process.kill("SIGKILL");
        await runtime?.exited;
      } else if (signal === "SIGTERM" && exit !== 0 && exit !== "SIGTERM") {
        failures.push(`SIGTERM #${stopped + 1}: the runtime exited with ${exit}, not 0; stderr:\n${tail(runtime?.stderr() ?? "")}`);
      }
      stopped++;
      if (recovering() && stopped < stops) runtime = spawnRuntime();
      else await serve();
    }

    if (disk !== undefined && options.diskFull !== undefined) {
      const pid = runtime?.process.pid;
      for (let cycle = 0; cycle < options.diskFull.cycles; cycle++) {
        await sleep(300 + random() * 700);
        const reported = diskErrors(runtime?.stderr() ?? "");
        disk.fill();
        // The runtime keeps serving from the space its store reserved ahead
        // (space-reserve.ts) until it needs more: the disk stays full until
        // it has said so, then a little longer.
        for (let waited = 0; waited < 20_000 && diskErrors(runtime?.stderr() ?? "") === reported; waited += 100) await sleep(100);
        await sleep(200 + random() * 1000);
        disk.free();
        diskFullCycles++;
        if (runtime?.process.exitCode !== null || runtime.process.signalCode !== null) {
          failures.push(
            `disk full, cycle ${cycle + 1}: the runtime exited (${runtime?.process.exitCode ?? runtime?.process.signalCode}) instead of recovering by itself; stderr:\n${tail(runtime?.stderr() ?? "")}`,
          );
          break;
        }
      }
      diskFullErrors = diskErrors(runtime?.stderr() ?? "");
      if (diskFullErrors === 0)
        failures.push("disk full: the runtime logged no ENOSPC or EFBIG, so the disk never filled for it (the check proved nothing)");
      if (runtime?.process.pid !== pid) failures.push("disk full: the runtime was restarted");
      // lmdb-js's own failed page write can corrupt the heap (space-reserve.ts): the store must fail the group first.
      if (runtime?.stderr().includes("Write error"))
        failures.push("disk full: LMDB's own page write met the full disk (its 'Write error' is on stderr)");
    }

    // The fault is gone: let the client run against a healthy runtime, then drain.
    if (runtime?.process.exitCode !== null || runtime.process.signalCode !== null) await serve();
    await sleep(1000);
    const load = await stopLoadClient(client);
    const { balanceTotal, checkFailures, suspects } = await checkBank(url, accounts, initial, load);
    failures.push(...checkFailures, ...checkAnswers(options.name, load));

    const summary =
      `storm ${options.name} (seed ${seed}): ${options.shards} shards, ` +
      `${remote === undefined ? "" : `remote functions, ${endpointKills} endpoint SIGKILLs, `}` +
      `${stopped} ${signal}s (${duringRecovery} before it served), ${diskFullCycles} disk-full cycles${disk === undefined ? "" : ` on a ${disk.how}`} (${diskFullErrors} write errors logged), ` +
      `${load.acknowledged.length} transfers acknowledged, ${load.retries} retries (${JSON.stringify(load.retriedCodes)}), ` +
      `${load.refused.length} refused (${summarize(load.refused)}), ${load.abandoned.length} abandoned, ` +
      `${load.nonRetryable.length} non-retryable answers, ` +
      `total balance ${balanceTotal} of ${accounts * initial}: ${failures.length === 0 ? "ok" : `${failures.length} checks FAILED`}`;
    process.stdout.write(`${summary}\n`);
    if (failures.length > 0) {
      const log = [...logs, runtime?.stderr() ?? ""].join("");
      failures.push(logExcerpt(log, suspects));
      // All of it, for a closer look (SHOAL_STORM_LOG_LEVEL=info or debug says more).
      const saved = join(tmpdir(), `shoal-storm-${seed}.log`);
      writeFileSync(saved, log);
      failures.push(`the runtime's whole log: ${saved}`);
    }
    return { seed, summary, failures };
  } finally {
    client?.process.kill("SIGKILL");
    runtime?.process.kill("SIGKILL");
    endpoint?.process.kill("SIGKILL");
    await runtime?.exited;
    await endpoint?.exited;
    disk?.dispose();
    rmSync(root, { recursive: true, force: true });
  }
}

/**
 * Remote mode's shoal.yaml (and the bank's descriptor set beside it), with
 * the same shards and snapshots as the embedded storm's flags. The endpoint's
 * retries outlast its restart, so a SIGKILL costs a message time, not a
 * dead letter; 10 attempts of 3 s plus the backoff stay below the default
 * invokeTimeoutMs (60 s), as the config requires.
 */
function remoteConfig(root: string, o: BankStormOptions & { port: number; dataDir: string; endpointPort: number }): string {
  const descriptors = join(root, "bank.binpb");
  execFileSync(
    join(repoRoot, "node_modules/.bin/buf"),
    ["build", "--path", "examples/bank/proto/bank/v1/account.proto", "-o", descriptors],
    { cwd: repoRoot, stdio: "pipe" },
  );
  const path = join(root, "shoal.yaml");
  writeFileSync(
    path,
    `shards: ${o.shards}
ingress: { port: ${o.port} }
storage: { directory: ${JSON.stringify(o.dataDir)} }
functions:
  descriptors: ${JSON.stringify(descriptors)}
  remote:
    - type: bank.v1.Account
      url: "http://127.0.0.1:${o.endpointPort}"
      timeoutMs: 3000
      maxConcurrent: 16
      maxBatch: 8
      retry: { maxAttempts: 10, initialDelayMs: 100, maxDelayMs: 1000 }
log: { level: warn }
`,
  );
  return path;
}

/**
 * Starts the load client on these ingresses (round-robin) and waits until it
 * seeded the accounts; it retries a transfer until `settleMs` (default 15 s)
 * after its SIGTERM. `acyclic`: no two transfers in flight form a cycle of
 * calls (the load client's --acyclic).
 */
/** How long the load client retries a transfer after its SIGTERM, unless a storm says otherwise, in ms. */
export const settleMs = 15_000;

export async function startLoadClient(
  urls: readonly string[],
  o: { accounts: number; workers: number; initial: number; seed: number; acyclic?: boolean; settleMs?: number },
): Promise<Child> {
  const client = start(process.execPath, [
    loadClient,
    urls.join(","),
    "--accounts",
    String(o.accounts),
    "--workers",
    String(o.workers),
    "--initial",
    String(o.initial),
    "--seed",
    String(o.seed),
    "--settle-ms",
    // SHOAL_STORM_SETTLE_MS: longer, to tell a transfer that recovers slowly from one that never does.
    process.env.SHOAL_STORM_SETTLE_MS ?? String(o.settleMs ?? settleMs),
    ...(o.acyclic === true ? ["--acyclic"] : []),
  ]);
  await client.waitFor(/"seeded"/, 120_000);
  return client;
}

/** Stops the load client (it finishes its transfers in flight) and reads its summary. */
export async function stopLoadClient(client: Child): Promise<LoadSummary> {
  client.process.kill("SIGTERM");
  await client.exited;
  const summaryLine = client
    .stdout()
    .split("\n")
    .find((line) => line.startsWith('{"summary"'));
  if (summaryLine === undefined) throw new Error(`the load client printed no summary; stderr:\n${client.stderr()}`);
  return JSON.parse(summaryLine).summary as LoadSummary;
}

/**
 * A stop or a crash is transient (DESIGN §7): the client must get a code it
 * may retry, even though the load client retries whatever it gets. Prints
 * each other answer and returns the failure, if any.
 */
export function checkAnswers(name: string, load: LoadSummary): string[] {
  for (const n of load.nonRetryable) {
    const source = `${n.status === undefined ? "no HTTP response" : `HTTP ${n.status}`}${n.nodeErrors.length > 0 ? `, ${n.nodeErrors.join(" < ")}` : ""}`;
    process.stdout.write(`storm ${name}: non-retryable ${n.code} for ${n.request} at ${n.time} (${source}): ${n.message}\n`);
  }
  if (load.nonRetryable.length === 0) return [];
  const byMessage = new Map<string, number>();
  for (const n of load.nonRetryable) byMessage.set(`${n.code}: ${n.message}`, (byMessage.get(`${n.code}: ${n.message}`) ?? 0) + 1);
  return [
    `retryable codes: the client got ${load.nonRetryable.length} answers that are neither retryable nor a handler's refusal: ${[...byMessage].map(([m, k]) => `${k}x ${m}`).join("; ")}`,
  ];
}

/**
 * The checks after a storm: every acknowledged transfer is on both ledgers
 * exactly once, a refused one on neither, nothing is on a ledger twice or
 * unknown to the client, money is conserved, and no transfer was left without
 * a definitive answer once the fault was gone.
 */
export async function checkBank(
  url: string,
  accounts: number,
  initial: number,
  load: LoadSummary,
): Promise<{ balanceTotal: bigint; checkFailures: string[]; suspects: Transfer[] }> {
  const failures: string[] = [];
  const ledgers = new Map<string, Array<{ transferId: string; amount: string }>>();
  let total = 0n;
  for (let i = 0; i < accounts; i++) {
    const view = await getAccount(url, `acct-${i}`);
    total += BigInt(view.balance ?? "0");
    ledgers.set(`acct-${i}`, view.ledger ?? []);
  }
  const amounts = (account: string, id: string) => (ledgers.get(account) ?? []).filter((e) => e.transferId === id).map((e) => e.amount);
  const show = (t: Transfer) =>
    `${t.id} (${t.from} -> ${t.to}, ${t.amount}): debits ${JSON.stringify(amounts(t.from, t.id))}, credits ${JSON.stringify(amounts(t.to, t.id))}`;

  const notOnce = load.acknowledged.filter((t) => {
    const debits = amounts(t.from, t.id);
    const credits = amounts(t.to, t.id);
    return !(debits.length === 1 && debits[0] === `-${t.amount}` && credits.length === 1 && credits[0] === t.amount);
  });
  if (notOnce.length > 0)
    failures.push(
      `exactly once: ${notOnce.length} acknowledged transfers are not applied exactly once on both accounts, e.g. ${notOnce.slice(0, 5).map(show).join("; ")}`,
    );
  const refusedApplied = load.refused.filter((t) => amounts(t.from, t.id).length + amounts(t.to, t.id).length > 0);
  if (refusedApplied.length > 0)
    failures.push(
      `exactly once: ${refusedApplied.length} refused transfers are on a ledger, e.g. ${refusedApplied
        .slice(0, 5)
        .map((t) => `${show(t)} refused with ${t.code}: ${t.message}`)
        .join("; ")}`,
    );
  const halfApplied = load.abandoned.filter((t) => amounts(t.from, t.id).length !== amounts(t.to, t.id).length);
  if (halfApplied.length > 0)
    failures.push(
      `exactly once: ${halfApplied.length} unanswered transfers are on one account only, e.g. ${halfApplied.slice(0, 5).map(show).join("; ")}`,
    );
  const known = new Set([...load.acknowledged, ...load.refused, ...load.abandoned].map((t) => t.id));
  for (const [account, ledger] of ledgers) {
    const ids = ledger.map((e) => e.transferId);
    const twice = ids.filter((id, i) => ids.indexOf(id) !== i);
    if (twice.length > 0)
      failures.push(`exactly once: ${account} has ${twice.length} transfers twice, e.g. ${twice.slice(0, 5).join(", ")}`);
    const unknown = ids.filter((id) => !known.has(id));
    if (unknown.length > 0)
      failures.push(`exactly once: ${account} has transfers the client never sent: ${unknown.slice(0, 5).join(", ")}`);
  }
  if (total !== BigInt(accounts * initial)) failures.push(`money conserved: the balances add up to ${total}, not ${accounts * initial}`);
  if (load.abandoned.length > 0) {
    const byError = new Map<string, number>();
    for (const t of load.abandoned) byError.set(t.lastError, (byError.get(t.lastError) ?? 0) + 1);
    failures.push(
      `no key left failing: ${load.abandoned.length} transfers still had no definitive answer within the load client's settle time (--settle-ms) after the fault was gone; last errors: ${[...byError].map(([e, n]) => `${n}x ${e}`).join("; ")}; e.g. ${load.abandoned
        .slice(0, 5)
        .map((t) => t.id)
        .join(", ")}`,
    );
  }
  if (load.acknowledged.length === 0) failures.push("the client got no transfer acknowledged (the storm tested nothing)");
  return { balanceTotal: total, checkFailures: failures, suspects: [...notOnce, ...refusedApplied, ...load.abandoned] };
}

/** An account's view, retried while the runtime is not (yet) serving it. */
async function getAccount(
  url: string,
  account: string,
): Promise<{ balance?: string; ledger?: Array<{ transferId: string; amount: string }> }> {
  let last = "";
  for (let attempt = 0; attempt < 100; attempt++) {
    try {
      const res = await fetch(`${url}/bank.v1.Account/Get`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ account }),
      });
      if (res.ok) return (await res.json()) as { balance?: string; ledger?: Array<{ transferId: string; amount: string }> };
      last = await res.text();
    } catch (err) {
      last = String(err);
    }
    await sleep(100);
  }
  throw new Error(`bank.v1.Account/Get ${account} kept failing after the storm: ${last}`);
}

/** How many times a runtime's log names a full disk or file size limit. */
function diskErrors(stderr: string): number {
  return (stderr.match(/ENOSPC|EFBIG/g) ?? []).length;
}

/**
 * A data directory that can be made full while the runtime runs: a tmpfs
 * mounted on it and a ballast file filling it. Mounting needs root; without
 * it the runtime's file size limit is lowered to 0 and raised again instead
 * (prlimit, as test/faults.test.ts does with ulimit), so its writes fail with
 * EFBIG rather than ENOSPC.
 */
function smallDisk(
  dir: string,
  sizeMiB: number,
  pid: () => number | undefined,
): { how: string; fill(): void; free(): void; dispose(): void } {
  try {
    execFileSync("mount", ["-t", "tmpfs", "-o", `size=${sizeMiB}m`, "tmpfs", dir], { stdio: "pipe" });
  } catch (err) {
    process.stdout.write(`storm: cannot mount a tmpfs (${String(err).split("\n")[0]}); lowering the runtime's file size limit instead\n`);
    const limit = (value: string) => execFileSync("prlimit", ["--pid", String(pid()), `--fsize=${value}:`], { stdio: "pipe" });
    return { how: "file size limit", fill: () => limit("0"), free: () => limit("unlimited"), dispose() {} };
  }
  const ballast = join(dir, "ballast");
  return {
    how: `${sizeMiB} MiB tmpfs`,
    fill() {
      const fd = openSync(ballast, "w");
      try {
        // Big chunks first, then pages, until the kernel says ENOSPC.
        for (const size of [1 << 20, 4096]) {
          const chunk = Buffer.alloc(size);
          for (;;) {
            try {
              writeSync(fd, chunk);
            } catch (err) {
              if ((err as NodeJS.ErrnoException).code === "ENOSPC") break;
              throw err;
            }
          }
        }
      } finally {
        closeSync(fd);
      }
    },
    free() {
      rmSync(ballast, { force: true });
    },
    dispose() {
      execFileSync("umount", ["-l", dir], { stdio: "pipe" });
    },
  };
}

/**
 * The runtime's log lines about the transfers a check failed on: the ingress
 * names a keyed request's invocation after its idempotency key (ingress.ts),
 * and its calls' ids start with it. The last lines when none match.
 */
export function logExcerpt(log: string, suspects: Transfer[]): string {
  const invocations = suspects.slice(0, 20).map((t) => {
    const hash = createHash("sha256").update(`bank.v1.Account\u0000${t.from}\u0000Transfer\u0000${t.id}`).digest("base64url");
    return { id: t.id, invocation: `k-${hash}` };
  });
  const lines = log.split("\n").filter((line) => invocations.some((i) => line.includes(i.invocation)));
  if (lines.length === 0)
    return `runtime log, last lines (none names a failed transfer's invocation):\n${tail(log) || "(empty at level warn)"}`;
  const names = invocations.map((i) => `${i.id} = ${i.invocation}`).join(", ");
  return `runtime log, lines about the failed transfers (${names}):\n${tail(lines.join("\n"), 20)}`;
}

export function tail(text: string, lines = 15): string {
  return text
    .trimEnd()
    .split("\n")
    .slice(-lines)
    .map((line) => (line.length > 400 ? `${line.slice(0, 400)}...` : line))
    .join("\n");
}

export function summarize(refused: Array<{ code: string; message: string }>): string {
  const counts = new Map<string, number>();
  for (const r of refused) {
    const reason = r.message.startsWith("call cycle") ? "call cycle" : r.code === "FailedPrecondition" ? "insufficient funds" : r.code;
    counts.set(reason, (counts.get(reason) ?? 0) + 1);
  }
  return [...counts].map(([k, v]) => `${k}: ${v}`).join(", ") || "none";
}
