// `npm run bench` (bench/run.mjs loads this file once built). See bench/README.md.
//
//   node bench/dist/run.js                       the three servers side by side, every row
//   node bench/dist/run.js --profile shoal-memory [--seconds 5] [--concurrency 64] [--keys 1000] [--top 30]
//
// Environment: BENCH_SECONDS (measured seconds per run, default 5),
// BENCH_WARMUP_SECONDS (default 1), BENCH_ROWS (default "1x1,64x1000,256x10000",
// concurrency x keys), BENCH_KINDS (default "plain,shoal-memory,shoal-durable"),
// BENCH_DIR (parent of the durable store's fresh directory, default the OS tmpdir),
// BENCH_CLIENT (`connect`, the default, or `raw`: see load.ts).
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statfsSync } from "node:fs";
import { cpus, release, tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { type ClientKind, createLoadGenerator, keyName, type LoadGenerator, quantile, readOverWire } from "./load.js";
import { formatProfile, summarizeProfile } from "./profile.js";
import { extraKinds, isKind, type Kind, kinds, type ServerReport } from "./protocol.js";
import { type ServerProcess, startServer } from "./server-process.js";

interface Row {
  readonly concurrency: number;
  readonly keys: number;
}

interface RunResult {
  readonly kind: Kind;
  readonly row: Row;
  readonly rps: number;
  readonly p50: number;
  readonly p99: number;
  readonly peakRssMb: number;
  /** Server CPU time in the window / wall time (1 = one core). */
  readonly serverCpu: number;
  /** Server CPU time per completed request, µs. */
  readonly cpuPerRequestUs: number;
  /** Server event-loop utilization in the window (0..1). */
  readonly serverBusy: number;
  readonly clientCpu: number;
  readonly fsync?: { readonly perSecond: number; readonly records: number; readonly bytes: number };
  readonly errors: number;
  readonly ok: boolean;
  readonly check: string;
}

const env = process.env;

function numberFromEnv(name: string, fallback: number): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value <= 0) throw new Error(`${name} must be a positive number, got "${raw}"`);
  return value;
}

function parseRows(raw: string): Row[] {
  return raw.split(",").map((part) => {
    const match = /^\s*(\d+)x(\d+)\s*$/.exec(part);
    if (match === null) throw new Error(`BENCH_ROWS: "${part}" is not <concurrency>x<keys>, e.g. 64x1000`);
    return { concurrency: Number(match[1]), keys: Number(match[2]) };
  });
}

function parseKinds(raw: string): Kind[] {
  return raw.split(",").map((k) => {
    const kind = k.trim();
    if (!isKind(kind)) throw new Error(`BENCH_KINDS: unknown kind "${kind}"; use ${[...kinds, ...extraKinds].join(", ")}`);
    return kind;
  });
}

const mb = (bytes: number) => bytes / (1024 * 1024);
const fmtInt = (n: number) => Math.round(n).toLocaleString("en-US");
const fmtMs = (ms: number) => (ms < 10 ? ms.toFixed(2) : ms < 100 ? ms.toFixed(1) : ms.toFixed(0));
const fmtPct = (x: number) => `${Math.round(100 * x)}%`;

/** Compares the server's counters with the adds the load generator saw acknowledged. */
function compareState(state: Map<string, bigint>, acked: Uint32Array, errors: number): { ok: boolean; text: string } {
  let sum = 0n;
  let expected = 0n;
  let wrong = 0;
  let firstWrong = "";
  for (let i = 0; i < acked.length; i++) {
    const want = BigInt(acked[i] ?? 0);
    const got = state.get(keyName(i)) ?? 0n;
    sum += got;
    expected += want;
    // An add that failed at the client may still have been applied.
    if (got < want || got > want + BigInt(errors)) {
      wrong++;
      firstWrong ||= `${keyName(i)}=${got}, acked ${want}`;
    }
  }
  const extra = [...state.keys()].filter((k) => !/^k\d+$/.test(k) || Number(k.slice(1)) >= acked.length);
  if (wrong > 0 || extra.length > 0) {
    return {
      ok: false,
      text: `MISMATCH: Σ=${sum} vs ${expected} acked; ${wrong} keys wrong (${firstWrong})${extra.length ? `; unexpected keys ${extra.slice(0, 3).join(",")}` : ""}`,
    };
  }
  return { ok: true, text: `Σ=${fmtInt(Number(sum))} = acked${errors > 0 ? ` (+≤${errors} failed adds)` : ""}` };
}

/** Checks a sample of keys through the `Get` rpc against the acknowledged adds. */
async function checkOverWire(url: string, acked: Uint32Array, errors: number): Promise<string | undefined> {
  const sample = Array.from({ length: Math.min(acked.length, 100) }, (_, i) => (i * 7919) % acked.length);
  const values = await readOverWire(url, [...new Set(sample)]);
  for (const [k, got] of values) {
    const want = BigInt(acked[k] ?? 0);
    if (got < want || got > want + BigInt(errors)) return `Get(${keyName(k)}) = ${got}, acked ${want}`;
  }
  return undefined;
}

interface Settings {
  /** Unmeasured load per server before its first slice. */
  readonly warmupMs: number;
  /** Measured time per server and row, split into slices. */
  readonly measureMs: number;
  readonly slices: number;
  /** Unmeasured load at the start of each slice, so the window sees a full pipeline. */
  readonly rampMs: number;
  readonly baseDir: string;
  readonly client: ClientKind;
}

/** One server of a row and what its measured slices added up to. */
interface Subject {
  readonly kind: Kind;
  readonly directory: string | undefined;
  server: ServerProcess | undefined;
  load: LoadGenerator | undefined;
  completed: number;
  seconds: number;
  latencies: number[];
  clientCpuUs: number;
  serverCpuUs: number;
  wallUs: number;
  eluActive: number;
  eluTotal: number;
  storage: { groups: number; records: number; bytes: number } | undefined;
  peakRss: number;
}

/** Runs one measured slice against one server, adding to its totals. */
async function measureSlice(subject: Subject, settings: Settings): Promise<void> {
  const server = subject.server as ServerProcess;
  const load = subject.load as LoadGenerator;
  let before: Promise<ServerReport> | undefined;
  let after: Promise<ServerReport> | undefined;
  let poller: NodeJS.Timeout | undefined;
  const sampleRss = () =>
    void server.rss().then(
      (rss) => {
        subject.peakRss = Math.max(subject.peakRss, rss);
      },
      () => undefined,
    );
  let windowStart = 0;
  let windowEnd = 0;
  const result = await load.slice({
    warmupMs: settings.rampMs,
    durationMs: settings.measureMs / settings.slices,
    onMeasureStart: () => {
      windowStart = performance.now();
      before = server.report();
      sampleRss();
      poller = setInterval(sampleRss, 100);
    },
    onMeasureEnd: () => {
      windowEnd = performance.now();
      after = server.report();
      clearInterval(poller);
      sampleRss();
    },
  });
  clearInterval(poller);
  if (before === undefined || after === undefined) throw new Error("the measured window never opened or closed");
  const [r0, r1] = await Promise.all([before, after]);
  subject.completed += result.completed;
  subject.seconds += result.seconds;
  for (const latency of result.latenciesMs) subject.latencies.push(latency);
  subject.clientCpuUs += result.clientCpuUs;
  subject.wallUs += (windowEnd - windowStart) * 1000;
  subject.serverCpuUs += r1.cpu.user + r1.cpu.system - (r0.cpu.user + r0.cpu.system);
  const active = r1.elu.active - r0.elu.active;
  subject.eluActive += active;
  subject.eluTotal += active + (r1.elu.idle - r0.elu.idle);
  if (r0.storage !== undefined && r1.storage !== undefined) {
    subject.storage ??= { groups: 0, records: 0, bytes: 0 };
    subject.storage.groups += r1.storage.groups - r0.storage.groups;
    subject.storage.records += r1.storage.records - r0.storage.records;
    subject.storage.bytes += r1.storage.bytes - r0.storage.bytes;
  }
}

/** After the load: every acknowledged add is in the state (per key), a sample reads back through Get, and the durable store survives kill -9. */
async function check(subject: Subject): Promise<{ ok: boolean; text: string }> {
  const load = subject.load as LoadGenerator;
  const server = subject.server as ServerProcess;
  const compared = compareState(await server.state(), load.acked, load.errors);
  let ok = compared.ok;
  let text = compared.text;
  const wire = await checkOverWire(server.url, load.acked, load.errors);
  if (wire !== undefined) {
    ok = false;
    text += `; ${wire}`;
  }
  if (subject.kind === "shoal-durable" && subject.directory !== undefined) {
    await server.kill();
    subject.server = undefined;
    const t0 = performance.now();
    subject.server = await startServer(subject.kind, { directory: subject.directory });
    const restartMs = performance.now() - t0;
    const recovered = compareState(await subject.server.state(), load.acked, load.errors);
    ok &&= recovered.ok;
    text += recovered.ok ? `; after kill -9: same (restart ${fmtMs(restartMs / 1000)} s)` : `; after kill -9: ${recovered.text}`;
  }
  if (load.errors > 0) text += `; ${load.errors} errors: ${[...load.errorKinds].map(([m, n]) => `${n}× ${m}`).join("; ")}`;
  return { ok, text };
}

/**
 * Measures one row: the servers side by side, each in its own process, loaded
 * one at a time in short slices whose order rotates every round, so that the
 * machine's drift falls on every server alike.
 */
async function measureRow(row: Row, kindsToRun: readonly Kind[], settings: Settings): Promise<RunResult[]> {
  const subjects: Subject[] = kindsToRun.map((kind) => ({
    kind,
    directory: kind === "shoal-durable" ? storeDirectory(settings.baseDir) : undefined,
    server: undefined,
    load: undefined,
    completed: 0,
    seconds: 0,
    latencies: [],
    clientCpuUs: 0,
    serverCpuUs: 0,
    wallUs: 0,
    eluActive: 0,
    eluTotal: 0,
    storage: undefined,
    peakRss: 0,
  }));
  try {
    for (const s of subjects) {
      s.server = await startServer(s.kind, { directory: s.directory });
      s.load = await createLoadGenerator({ baseUrl: s.server.url, concurrency: row.concurrency, keys: row.keys, client: settings.client });
    }
    for (const s of subjects) await s.load?.slice({ warmupMs: settings.warmupMs, durationMs: 0 });
    for (let round = 0; round < settings.slices; round++) {
      for (let i = 0; i < subjects.length; i++) await measureSlice(subjects[(round + i) % subjects.length] as Subject, settings);
    }
    const results: RunResult[] = [];
    for (const s of subjects) {
      s.load?.close();
      const { ok, text } = await check(s);
      const sorted = Float64Array.from(s.latencies).sort();
      const storage = s.storage;
      results.push({
        kind: s.kind,
        row,
        rps: s.completed / s.seconds,
        p50: quantile(sorted, 0.5),
        p99: quantile(sorted, 0.99),
        peakRssMb: mb(s.peakRss),
        serverCpu: s.serverCpuUs / s.wallUs,
        cpuPerRequestUs: s.completed > 0 ? s.serverCpuUs / s.completed : Number.NaN,
        serverBusy: s.eluTotal > 0 ? s.eluActive / s.eluTotal : 0,
        clientCpu: s.clientCpuUs / s.wallUs,
        fsync:
          s.kind === "shoal-durable" && storage !== undefined && storage.groups > 0
            ? { perSecond: storage.groups / s.seconds, records: storage.records / storage.groups, bytes: storage.bytes / storage.groups }
            : undefined,
        errors: s.load?.errors ?? 0,
        ok,
        check: text,
      });
    }
    return results;
  } finally {
    for (const s of subjects) {
      s.load?.close();
      await s.server?.close().catch(() => s.server?.kill());
      if (s.directory !== undefined) removeStore(s.directory);
    }
  }
}

function cpuModel(): string {
  try {
    const match = /^model name\s*:\s*(.+)$/m.exec(readFileSync("/proc/cpuinfo", "utf8"));
    if (match?.[1] !== undefined) return match[1].trim();
  } catch {
    // not Linux
  }
  return cpus()[0]?.model ?? "unknown";
}

function filesystemOf(path: string): string {
  // statfs magic numbers, in hex as in statfs(2)
  const names: Record<string, string> = {
    ef53: "ext4",
    "58465342": "xfs",
    "9123683e": "btrfs",
    "1021994": "tmpfs",
    "794c7630": "overlayfs",
    "2fc12fc1": "zfs",
    "6969": "nfs",
  };
  try {
    const type = statfsSync(path).type;
    return names[type.toString(16)] ?? `fs type 0x${type.toString(16)}`;
  } catch {
    return "unknown fs";
  }
}

function commandLine(): string {
  const vars = ["BENCH_SECONDS", "BENCH_WARMUP_SECONDS", "BENCH_ROWS", "BENCH_KINDS", "BENCH_DIR", "BENCH_CLIENT"]
    .filter((name) => env[name] !== undefined && env[name] !== "")
    .map((name) => `${name}=${env[name]}`);
  const args = process.argv.slice(2);
  const base =
    env.npm_lifecycle_event === "bench"
      ? `npm run bench${args.length ? ` -- ${args.join(" ")}` : ""}`
      : `node bench/dist/run.js${args.length ? ` ${args.join(" ")}` : ""}`;
  return [...vars, base].join(" ");
}

function machine(settings: Settings): string[] {
  const { baseDir } = settings;
  return [
    `- date: ${new Date().toISOString()}`,
    `- command: \`${commandLine()}\` (from the repository root)`,
    `- node ${process.version}, ${process.platform} ${release()}`,
    `- CPU: ${cpuModel()}, ${cpus().length} logical cores (load generator and server share them)`,
    `- durable store: fresh directory under ${baseDir} (${filesystemOf(baseDir)}), fsync on`,
    settings.client === "connect"
      ? "- load generator: @connectrpc/connect-node client (Connect protocol, binary, HTTP/1.1), one keep-alive connection per worker, in the parent process"
      : "- load generator: raw sockets writing Connect unary requests (binary, HTTP/1.1), one keep-alive connection per worker, in the parent process",
  ];
}

function ratio(a: RunResult | undefined, b: RunResult | undefined): number | undefined {
  return a !== undefined && b !== undefined && b.rps > 0 ? a.rps / b.rps : undefined;
}

/** b's server CPU per request over a's: above 1 when a spends less CPU per request. */
function cpuRatio(a: RunResult | undefined, b: RunResult | undefined): number | undefined {
  return a !== undefined && b !== undefined && a.cpuPerRequestUs > 0 ? b.cpuPerRequestUs / a.cpuPerRequestUs : undefined;
}

function report(results: RunResult[], rows: Row[], settings: Settings): string {
  const out: string[] = [];
  out.push(...machine(settings));
  out.push(
    `- each row: the servers started side by side, each in its own process; ${settings.warmupMs / 1000} s warm-up each, then ${settings.slices} rounds of ` +
      `[${settings.rampMs / 1000} s ramp + ${settings.measureMs / settings.slices / 1000} s measured] per server, one server loaded at a time, the order rotating every round`,
    "",
    "| C | K | kind | req/s | p50 ms | p99 ms | server RSS MB | server CPU | server CPU µs/req | server loop busy | client CPU | fsyncs/s | records/fsync | bytes/fsync | check |",
    "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
  );
  for (const r of results) {
    const f = r.fsync;
    out.push(
      `| ${r.row.concurrency} | ${fmtInt(r.row.keys)} | ${r.kind} | ${fmtInt(r.rps)} | ${fmtMs(r.p50)} | ${fmtMs(r.p99)} | ${r.peakRssMb.toFixed(0)} | ${fmtPct(r.serverCpu)} | ${fmtInt(r.cpuPerRequestUs)} | ${fmtPct(r.serverBusy)} | ${fmtPct(r.clientCpu)} | ${f ? fmtInt(f.perSecond) : "—"} | ${f ? f.records.toFixed(1) : "—"} | ${f ? fmtInt(f.bytes) : "—"} | ${r.ok ? "ok" : "FAILED"}: ${r.check} |`,
    );
  }
  out.push(
    "",
    "Throughput ratios, and in brackets the inverse ratio of server CPU per request (what the server would reach if CPU were its only limit):",
    "",
    "| C | K | shoal-memory / plain | shoal-durable / shoal-memory |",
    "|---:|---:|---:|---:|",
  );
  const find = (row: Row, kind: Kind) => results.find((r) => r.row === row && r.kind === kind);
  const fmtRatio = (x: number | undefined) => (x === undefined ? "—" : `${x.toFixed(2)}×`);
  const both = (a: RunResult | undefined, b: RunResult | undefined) => `${fmtRatio(ratio(a, b))} (${fmtRatio(cpuRatio(a, b))})`;
  for (const row of rows) {
    out.push(
      `| ${row.concurrency} | ${fmtInt(row.keys)} | ${both(find(row, "shoal-memory"), find(row, "plain"))} | ${both(find(row, "shoal-durable"), find(row, "shoal-memory"))} |`,
    );
  }
  const c64 = rows.find((r) => r.concurrency === 64);
  if (c64 !== undefined) {
    const memory = ratio(find(c64, "shoal-memory"), find(c64, "plain"));
    const durable = ratio(find(c64, "shoal-durable"), find(c64, "shoal-memory"));
    const p99 = find(c64, "shoal-durable")?.p99;
    const verdict = (met: boolean | undefined) => (met === undefined ? "not measured" : met ? "met" : "MISSED");
    out.push(
      "",
      `Targets at C=64, K=${fmtInt(c64.keys)}:`,
      `- shoal-memory ≥ 0.8× plain: ${fmtRatio(memory)} — ${verdict(memory === undefined ? undefined : memory >= 0.8)} (by server CPU per request: ${fmtRatio(cpuRatio(find(c64, "shoal-memory"), find(c64, "plain")))})`,
      `- shoal-durable ≥ 0.7× shoal-memory: ${fmtRatio(durable)} — ${verdict(durable === undefined ? undefined : durable >= 0.7)}`,
      `- shoal-durable p99 ≤ 25 ms: ${p99 === undefined ? "—" : `${fmtMs(p99)} ms`} — ${verdict(p99 === undefined ? undefined : p99 <= 25)}`,
      `  (with C requests always in flight the mean latency is C / throughput (Little's law): ${kinds
        .map((k) => find(c64, k))
        .filter((r) => r !== undefined)
        .map((r) => `${r.kind} ${fmtMs((1000 * c64.concurrency) / r.rps)} ms`)
        .join(", ")})`,
    );
  }
  const saturated = results.filter((r) => r.clientCpu > 0.9);
  if (saturated.length > 0) {
    out.push(
      "",
      `Note: the load generator used > 90% of a core in ${saturated.map((r) => `${r.kind} C=${r.row.concurrency}`).join(", ")}; those throughputs may be bounded by the client, not the server (compare server CPU µs/req, or run with BENCH_CLIENT=raw).`,
    );
  }
  return out.join("\n");
}

async function bench() {
  const measureMs = numberFromEnv("BENCH_SECONDS", 5) * 1000;
  const warmupMs = numberFromEnv("BENCH_WARMUP_SECONDS", 1) * 1000;
  const slices = Math.max(1, Math.round(measureMs / 1000));
  const rows = parseRows(env.BENCH_ROWS || "1x1,64x1000,256x10000");
  const selected = parseKinds(env.BENCH_KINDS || kinds.join(","));
  const baseDir = env.BENCH_DIR || tmpdir();
  const settings: Settings = { warmupMs, measureMs, slices, rampMs: 250, baseDir, client: parseClient(env.BENCH_CLIENT || "connect") };
  console.log(
    `Shoal benchmark: ${rows.length} rows × ${selected.length} servers, ${warmupMs / 1000} s warm-up + ${measureMs / 1000} s measured each, ${settings.client} client\n`,
  );
  const results: RunResult[] = [];
  for (const row of rows) {
    for (const r of await measureRow(row, selected, settings)) {
      results.push(r);
      const f = r.fsync
        ? `, ${r.fsync.records.toFixed(1)} records & ${fmtInt(r.fsync.bytes)} B per fsync (${fmtInt(r.fsync.perSecond)}/s)`
        : "";
      console.log(
        `C=${row.concurrency} K=${row.keys} ${r.kind.padEnd(13)} ${fmtInt(r.rps).padStart(7)} req/s  p50 ${fmtMs(r.p50)} ms  p99 ${fmtMs(r.p99)} ms  rss ${r.peakRssMb.toFixed(0)} MB  cpu srv ${fmtPct(r.serverCpu)} ${fmtInt(r.cpuPerRequestUs)} µs/req (loop ${fmtPct(r.serverBusy)}) cli ${fmtPct(r.clientCpu)}${f}  ${r.ok ? "ok" : "FAILED"}: ${r.check}`,
      );
    }
  }
  console.log(`\n${report(results, rows, settings)}`);
  if (results.some((r) => !r.ok)) process.exitCode = 1;
}

function parseClient(raw: string): ClientKind {
  if (raw !== "connect" && raw !== "raw") throw new Error(`BENCH_CLIENT must be connect or raw, got "${raw}"`);
  return raw;
}

function option(args: readonly string[], name: string, fallback: number): number {
  const i = args.indexOf(name);
  if (i < 0) return fallback;
  const value = Number(args[i + 1]);
  if (!Number.isFinite(value) || value <= 0) throw new Error(`${name} needs a positive number`);
  return value;
}

/** Runs one server under `node --cpu-prof` at a fixed load and summarizes where its CPU went. */
async function profile(args: readonly string[]) {
  const kind = args[args.indexOf("--profile") + 1];
  if (!isKind(kind)) throw new Error(`--profile needs a kind: ${[...kinds, ...extraKinds].join(", ")}`);
  const seconds = option(args, "--seconds", 5);
  const row = { concurrency: option(args, "--concurrency", 64), keys: option(args, "--keys", 1000) };
  const top = option(args, "--top", 30);
  const clientIndex = args.indexOf("--client");
  const client = parseClient(clientIndex >= 0 ? (args[clientIndex + 1] ?? "") : env.BENCH_CLIENT || "connect");
  const profileDir = fileURLToPath(new URL(`../profiles/${kind}-${Date.now()}`, import.meta.url));
  mkdirSync(profileDir, { recursive: true });
  const directory = kind === "shoal-durable" ? storeDirectory(env.BENCH_DIR || tmpdir()) : undefined;
  const server = await startServer(kind, { directory, execArgv: ["--cpu-prof", "--cpu-prof-dir", profileDir] });
  let requests = 0;
  try {
    const load = await createLoadGenerator({ baseUrl: server.url, ...row, client });
    const result = await load.slice({ warmupMs: 1000, durationMs: seconds * 1000 });
    load.close();
    requests = load.acked.reduce((sum, n) => sum + n, 0);
    const sorted = Float64Array.from(result.latenciesMs).sort();
    console.log(
      `${kind} under --cpu-prof, C=${row.concurrency} K=${row.keys}, ${client} client: ${fmtInt(result.completed / result.seconds)} req/s, p50 ${fmtMs(quantile(sorted, 0.5))} ms, p99 ${fmtMs(quantile(sorted, 0.99))} ms, ${load.errors} errors (the profiler slows the server)`,
    );
  } finally {
    await server.close();
    if (directory !== undefined) removeStore(directory);
  }
  const file = readdirSync(profileDir).find((f) => f.endsWith(".cpuprofile"));
  if (file === undefined) throw new Error(`no .cpuprofile in ${profileDir}`);
  const path = join(profileDir, file);
  console.log(`profile: ${path} (whole server lifetime: start-up, warm-up and load; open in Chrome DevTools > Performance)\n`);
  console.log(formatProfile(summarizeProfile(path), top, requests));
}

/** Durable store directories in use, removed on the way out even after Ctrl-C. */
const stores = new Set<string>();

function storeDirectory(baseDir: string): string {
  const directory = mkdtempSync(join(baseDir, "shoal-bench-"));
  stores.add(directory);
  return directory;
}

function removeStore(directory: string) {
  rmSync(directory, { recursive: true, force: true });
  stores.delete(directory);
}

process.on("SIGINT", () => {
  // The servers exit when their IPC channel closes with this process.
  for (const directory of stores) rmSync(directory, { recursive: true, force: true });
  process.exit(130);
});

const args = process.argv.slice(2);
(args.includes("--profile") ? profile(args) : bench()).catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
