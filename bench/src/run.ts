// `npm run bench` (bench/run.mjs loads this file once built). See bench/README.md.
//
//   node bench/dist/run.js                       the three servers side by side, every row
//   node bench/dist/run.js --profile shoal-memory [--seconds 5] [--concurrency 64] [--keys 1000] [--top 30]
//
// Environment: BENCH_SECONDS (measured seconds per run, default 5),
// BENCH_WARMUP_SECONDS (default 1), BENCH_ROWS (default "1x1,64x1000,256x10000",
// concurrency x keys), BENCH_KINDS (default "plain,shoal-memory,shoal-durable,shoal-remote";
// "cluster" names the four cluster kinds),
// BENCH_DIR (parent of the durable store's fresh directory, default the OS tmpdir),
// BENCH_CLIENT (`connect`, the default, or `raw`: see load.ts).
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { cpus, release, tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { type ClusterProcess, natsServerVersion, startCluster } from "./cluster.js";
import { type ClientKind, createLoadGenerator, keyName, type LoadGenerator, quantile, readOverWire } from "./load.js";
import { cpuModel, filesystemOf } from "./machine.js";
import { formatProfile, summarizeProfile } from "./profile.js";
import { clusterKinds, extraKinds, isClusterKind, isKind, type Kind, kinds, type ServerReport } from "./protocol.js";
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
  /** shoal-remote: the function endpoint's part of cpuPerRequestUs. */
  readonly endpointCpuPerRequestUs: number | undefined;
  /** Server event-loop utilization in the window (0..1). */
  readonly serverBusy: number;
  readonly clientCpu: number;
  readonly fsync?: { readonly perSecond: number; readonly records: number; readonly bytes: number };
  /** A cluster kind's runtime nodes and nats-servers apart: CPU µs per request and peak RSS MB of each group. */
  readonly groups?: { readonly nodes: GroupResult; readonly nats: GroupResult };
  readonly errors: number;
  readonly ok: boolean;
  readonly check: string;
}

interface GroupResult {
  readonly cpuPerRequestUs: number;
  readonly peakRssMb: number;
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
  return raw.split(",").flatMap((k) => {
    const kind = k.trim();
    if (kind === "cluster") return [...clusterKinds];
    if (!isKind(kind)) throw new Error(`BENCH_KINDS: unknown kind "${kind}"; use ${[...kinds, ...extraKinds, "cluster"].join(", ")}`);
    return [kind];
  });
}

/** The kinds on the local store with fsync: a fresh directory each, fsync columns, and the kill -9 check. */
const durable = (kind: Kind) => kind === "shoal-durable" || kind === "shoal-remote";

const mb = (bytes: number) => bytes / (1024 * 1024);
const fmtInt = (n: number) => Math.round(n).toLocaleString("en-US");
const fmtMs = (ms: number) => (ms < 10 ? ms.toFixed(2) : ms < 100 ? ms.toFixed(1) : ms.toFixed(0));
const fmtPct = (x: number) => (Number.isNaN(x) ? "—" : `${Math.round(100 * x)}%`);

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
  const values = await readOverWire([url], [...new Set(sample)]);
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
  endpointCpuUs: number | undefined;
  wallUs: number;
  eluActive: number;
  eluTotal: number;
  storage: { groups: number; records: number; bytes: number } | undefined;
  peakRss: number;
  /** Cluster kinds: CPU µs in the windows and peak RSS of the nodes and of the nats-servers. */
  groups: { nodes: { cpuUs: number; peakRss: number }; nats: { cpuUs: number; peakRss: number } } | undefined;
}

/** Runs one measured slice against one server, adding to its totals. */
async function measureSlice(subject: Subject, settings: Settings): Promise<void> {
  const server = subject.server as ServerProcess;
  const load = subject.load as LoadGenerator;
  let before: Promise<ServerReport> | undefined;
  let after: Promise<ServerReport> | undefined;
  let poller: NodeJS.Timeout | undefined;
  const groups = subject.groups;
  // A cluster's report is read from /proc here, and splits the RSS by group.
  const sampleRss = () =>
    void (groups === undefined ? server.rss() : server.report().then((r) => trackGroupRss(groups, r))).then(
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
  if (r0.endpointCpu !== undefined && r1.endpointCpu !== undefined) {
    subject.endpointCpuUs =
      (subject.endpointCpuUs ?? 0) + r1.endpointCpu.user + r1.endpointCpu.system - (r0.endpointCpu.user + r0.endpointCpu.system);
  }
  if (r0.elu !== undefined && r1.elu !== undefined) {
    const active = r1.elu.active - r0.elu.active;
    subject.eluActive += active;
    subject.eluTotal += active + (r1.elu.idle - r0.elu.idle);
  }
  if (groups !== undefined && r0.groups !== undefined && r1.groups !== undefined) {
    groups.nodes.cpuUs += r1.groups.nodes.cpuUs - r0.groups.nodes.cpuUs;
    groups.nats.cpuUs += r1.groups.nats.cpuUs - r0.groups.nats.cpuUs;
  }
  if (r0.storage !== undefined && r1.storage !== undefined) {
    subject.storage ??= { groups: 0, records: 0, bytes: 0 };
    subject.storage.groups += r1.storage.groups - r0.storage.groups;
    subject.storage.records += r1.storage.records - r0.storage.records;
    subject.storage.bytes += r1.storage.bytes - r0.storage.bytes;
  }
}

function trackGroupRss(groups: NonNullable<Subject["groups"]>, report: ServerReport): number {
  groups.nodes.peakRss = Math.max(groups.nodes.peakRss, report.groups?.nodes.rss ?? 0);
  groups.nats.peakRss = Math.max(groups.nats.peakRss, report.groups?.nats.rss ?? 0);
  return report.rss;
}

/**
 * A cluster after the load: every key read through Get, spread over the
 * ingresses, holds the acknowledged adds; then every node is SIGKILLed and
 * started again on an empty directory, and every key reads the same.
 */
async function checkCluster(subject: Subject, cluster: ClusterProcess): Promise<{ ok: boolean; text: string }> {
  const load = subject.load as LoadGenerator;
  const keys = Array.from({ length: load.acked.length }, (_, i) => i);
  const stateOf = (values: Map<number, bigint>) => new Map([...values].map(([k, v]) => [keyName(k), v]));
  // A shard may move between nodes at any time (a lease renewed late on a busy machine): its reads answer Unavailable meanwhile.
  const compared = compareState(stateOf(await readOverWire(cluster.urls, keys, 120_000)), load.acked, load.errors);
  let { ok, text } = compared;
  const t0 = performance.now();
  await cluster.crashAndRestartNodes();
  // The nodes serve once they own their shards again: until then a read answers Unavailable and is tried again.
  const recovered = compareState(stateOf(await readOverWire(cluster.urls, keys, 120_000)), load.acked, load.errors);
  const restartMs = performance.now() - t0;
  ok &&= recovered.ok;
  text += recovered.ok
    ? `; after kill -9 of every node, on empty directories: same (all keys read after ${fmtMs(restartMs / 1000)} s)`
    : `; after kill -9 of every node: ${recovered.text}`;
  return { ok, text };
}

/** After the load: every acknowledged add is in the state (per key), a sample reads back through Get, and the durable store survives kill -9. */
async function check(subject: Subject): Promise<{ ok: boolean; text: string }> {
  const load = subject.load as LoadGenerator;
  const server = subject.server as ServerProcess;
  if (isClusterKind(subject.kind)) {
    const { ok, text } = await checkCluster(subject, server as ClusterProcess);
    return { ok, text: load.errors > 0 ? `${text}; ${load.errors} errors: ${errorSummary(load)}` : text };
  }
  const compared = compareState(await server.state(), load.acked, load.errors);
  let ok = compared.ok;
  let text = compared.text;
  const wire = await checkOverWire(server.url, load.acked, load.errors);
  if (wire !== undefined) {
    ok = false;
    text += `; ${wire}`;
  }
  if (durable(subject.kind) && subject.directory !== undefined) {
    await server.kill();
    subject.server = undefined;
    const t0 = performance.now();
    subject.server = await startServer(subject.kind, { directory: subject.directory });
    const restartMs = performance.now() - t0;
    const recovered = compareState(await subject.server.state(), load.acked, load.errors);
    ok &&= recovered.ok;
    text += recovered.ok ? `; after kill -9: same (restart ${fmtMs(restartMs / 1000)} s)` : `; after kill -9: ${recovered.text}`;
  }
  if (load.errors > 0) text += `; ${load.errors} errors: ${errorSummary(load)}`;
  return { ok, text };
}

function errorSummary(load: LoadGenerator): string {
  return [...load.errorKinds].map(([m, n]) => `${n}× ${m}`).join("; ");
}

/**
 * Measures one row: the servers side by side, each in its own process, loaded
 * one at a time in short slices whose order rotates every round, so that the
 * machine's drift falls on every server alike.
 */
async function measureRow(row: Row, kindsToRun: readonly Kind[], settings: Settings): Promise<RunResult[]> {
  const subjects: Subject[] = kindsToRun.map((kind) => ({
    kind,
    directory: durable(kind) ? storeDirectory(settings.baseDir) : undefined,
    server: undefined,
    load: undefined,
    completed: 0,
    seconds: 0,
    latencies: [],
    clientCpuUs: 0,
    serverCpuUs: 0,
    endpointCpuUs: undefined,
    wallUs: 0,
    eluActive: 0,
    eluTotal: 0,
    storage: undefined,
    peakRss: 0,
    groups: isClusterKind(kind) ? { nodes: { cpuUs: 0, peakRss: 0 }, nats: { cpuUs: 0, peakRss: 0 } } : undefined,
  }));
  try {
    for (const s of subjects) {
      s.server = isClusterKind(s.kind)
        ? await startCluster(s.kind, settings.baseDir)
        : await startServer(s.kind, { directory: s.directory });
      s.load = await createLoadGenerator({
        baseUrls: s.server.urls,
        concurrency: row.concurrency,
        keys: row.keys,
        client: settings.client,
      });
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
        endpointCpuPerRequestUs: s.endpointCpuUs === undefined || s.completed === 0 ? undefined : s.endpointCpuUs / s.completed,
        serverBusy: s.eluTotal > 0 ? s.eluActive / s.eluTotal : Number.NaN,
        clientCpu: s.clientCpuUs / s.wallUs,
        fsync:
          durable(s.kind) && storage !== undefined && storage.groups > 0
            ? { perSecond: storage.groups / s.seconds, records: storage.records / storage.groups, bytes: storage.bytes / storage.groups }
            : undefined,
        groups:
          s.groups === undefined
            ? undefined
            : {
                nodes: { cpuPerRequestUs: s.groups.nodes.cpuUs / s.completed, peakRssMb: mb(s.groups.nodes.peakRss) },
                nats: { cpuPerRequestUs: s.groups.nats.cpuUs / s.completed, peakRssMb: mb(s.groups.nats.peakRss) },
              },
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

/** For shoal-remote, how its CPU per request divides between the runtime and the function endpoint. */
function split(r: RunResult | undefined): string {
  const endpoint = r?.endpointCpuPerRequestUs;
  if (r === undefined || endpoint === undefined) return "";
  return `; runtime ${fmtInt(r.cpuPerRequestUs - endpoint)} + endpoint ${fmtInt(endpoint)} µs/req`;
}

/** b's server CPU per request over a's: above 1 when a spends less CPU per request. */
function cpuRatio(a: RunResult | undefined, b: RunResult | undefined): number | undefined {
  return a !== undefined && b !== undefined && a.cpuPerRequestUs > 0 ? b.cpuPerRequestUs / a.cpuPerRequestUs : undefined;
}

function report(results: RunResult[], rows: Row[], settings: Settings): string {
  const out: string[] = [];
  out.push(...machine(settings));
  if (results.some((r) => isClusterKind(r.kind)))
    out.push(`- cluster kinds: ${natsServerVersion()}, its stores in fresh directories under ${settings.baseDir}; 64 shards`);
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
  out.push(...ratiosAndTargets(results, rows));
  out.push(...clusterReport(results, rows));
  const saturated = results.filter((r) => r.clientCpu > 0.9);
  if (saturated.length > 0) {
    out.push(
      "",
      `Note: the load generator used > 90% of a core in ${saturated.map((r) => `${r.kind} C=${r.row.concurrency}`).join(", ")}; those throughputs may be bounded by the client, not the server (compare server CPU µs/req, or run with BENCH_CLIENT=raw).`,
    );
  }
  return out.join("\n");
}

/** The single-process kinds against each other, and the targets at C=64; nothing when only cluster kinds ran. */
function ratiosAndTargets(results: RunResult[], rows: Row[]): string[] {
  if (results.every((r) => isClusterKind(r.kind))) return [];
  const out: string[] = [];
  out.push(
    "",
    "Throughput ratios, and in brackets the inverse ratio of server CPU per request (what the server would reach if CPU were its only limit):",
    "",
    "| C | K | shoal-memory / plain | shoal-durable / shoal-memory | shoal-remote / shoal-durable |",
    "|---:|---:|---:|---:|---:|",
  );
  const find = (row: Row, kind: Kind) => results.find((r) => r.row === row && r.kind === kind);
  const fmtRatio = (x: number | undefined) => (x === undefined ? "—" : `${x.toFixed(2)}×`);
  const both = (a: RunResult | undefined, b: RunResult | undefined) => `${fmtRatio(ratio(a, b))} (${fmtRatio(cpuRatio(a, b))})`;
  for (const row of rows) {
    out.push(
      `| ${row.concurrency} | ${fmtInt(row.keys)} | ${both(find(row, "shoal-memory"), find(row, "plain"))} | ${both(find(row, "shoal-durable"), find(row, "shoal-memory"))} | ${both(find(row, "shoal-remote"), find(row, "shoal-durable"))} |`,
    );
  }
  const c64 = rows.find((r) => r.concurrency === 64);
  if (c64 !== undefined) {
    const memory = ratio(find(c64, "shoal-memory"), find(c64, "plain"));
    const onDisk = ratio(find(c64, "shoal-durable"), find(c64, "shoal-memory"));
    const remote = ratio(find(c64, "shoal-remote"), find(c64, "shoal-durable"));
    const p99 = find(c64, "shoal-durable")?.p99;
    const verdict = (met: boolean | undefined) => (met === undefined ? "not measured" : met ? "met" : "MISSED");
    out.push(
      "",
      `Targets at C=64, K=${fmtInt(c64.keys)}:`,
      `- shoal-memory ≥ 0.8× plain: ${fmtRatio(memory)} — ${verdict(memory === undefined ? undefined : memory >= 0.8)} (by server CPU per request: ${fmtRatio(cpuRatio(find(c64, "shoal-memory"), find(c64, "plain")))})`,
      `- shoal-durable ≥ 0.7× shoal-memory: ${fmtRatio(onDisk)} — ${verdict(onDisk === undefined ? undefined : onDisk >= 0.7)}`,
      `- shoal-remote ≥ 0.5× shoal-durable: ${fmtRatio(remote)} — ${verdict(remote === undefined ? undefined : remote >= 0.5)} (by server CPU per request, runtime and endpoint together: ${fmtRatio(cpuRatio(find(c64, "shoal-remote"), find(c64, "shoal-durable")))}${split(find(c64, "shoal-remote"))})`,
      `- shoal-durable p99 ≤ 25 ms: ${p99 === undefined ? "—" : `${fmtMs(p99)} ms`} — ${verdict(p99 === undefined ? undefined : p99 <= 25)}`,
      `  (with C requests always in flight the mean latency is C / throughput (Little's law): ${kinds
        .map((k) => find(c64, k))
        .filter((r) => r !== undefined)
        .map((r) => `${r.kind} ${fmtMs((1000 * c64.concurrency) / r.rps)} ms`)
        .join(", ")})`,
    );
  }
  return out;
}

/** The cluster kinds apart: where the CPU goes (nodes, nats-servers), and 3 nodes against 1 and R3 against R1 per row. */
function clusterReport(results: RunResult[], rows: Row[]): string[] {
  const clustered = results.filter((r) => r.groups !== undefined);
  if (clustered.length === 0) return [];
  const out = [
    "",
    "Cluster kinds (`cluster-<N>n-r<R>`: N shoal-node processes on R nats-servers, streams with R replicas, the load through every node's ingress in turn). " +
      "CPU per request adds up every node and every nats-server process (utime + stime from /proc/<pid>/stat); all of them share this machine's cores with the load generator, " +
      "so aggregate throughput here is bounded by CPU, and CPU per request is the figure that tells whether scaling out is efficient: " +
      "N nodes at the same CPU per request would serve N times the load on N machines.",
    "",
    "| C | K | kind | req/s | p50 ms | p99 ms | CPU µs/req: nodes | nats-servers | total | RSS MB: nodes | nats-servers |",
    "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ];
  for (const r of clustered) {
    const g = r.groups as NonNullable<RunResult["groups"]>;
    out.push(
      `| ${r.row.concurrency} | ${fmtInt(r.row.keys)} | ${r.kind} | ${fmtInt(r.rps)} | ${fmtMs(r.p50)} | ${fmtMs(r.p99)} | ${fmtInt(g.nodes.cpuPerRequestUs)} | ${fmtInt(g.nats.cpuPerRequestUs)} | ${fmtInt(r.cpuPerRequestUs)} | ${g.nodes.peakRssMb.toFixed(0)} | ${g.nats.peakRssMb.toFixed(0)} |`,
    );
  }
  const find = (row: Row, kind: Kind) => clustered.find((r) => r.row === row && r.kind === kind);
  const fmtRatio = (x: number | undefined) => (x === undefined ? "—" : `${x.toFixed(2)}×`);
  // Here the CPU ratio is a over b itself (above 1: a spends more per request), the cost of scaling out.
  const pair = (a: RunResult | undefined, b: RunResult | undefined) =>
    `${fmtRatio(ratio(a, b))} / ${fmtRatio(a !== undefined && b !== undefined && b.cpuPerRequestUs > 0 ? a.cpuPerRequestUs / b.cpuPerRequestUs : undefined)}`;
  out.push(
    "",
    "Throughput / total CPU per request, one configuration over another:",
    "",
    "| C | K | 3 nodes / 1 node, R1 | 3 nodes / 1 node, R3 | R3 / R1, 1 node | R3 / R1, 3 nodes |",
    "|---:|---:|---:|---:|---:|---:|",
  );
  for (const row of rows) {
    out.push(
      `| ${row.concurrency} | ${fmtInt(row.keys)} | ${pair(find(row, "cluster-3n-r1"), find(row, "cluster-1n-r1"))} | ${pair(find(row, "cluster-3n-r3"), find(row, "cluster-1n-r3"))} | ${pair(find(row, "cluster-1n-r3"), find(row, "cluster-1n-r1"))} | ${pair(find(row, "cluster-3n-r3"), find(row, "cluster-3n-r1"))} |`,
    );
  }
  return out;
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
        `C=${row.concurrency} K=${row.keys} ${r.kind.padEnd(13)} ${fmtInt(r.rps).padStart(7)} req/s  p50 ${fmtMs(r.p50)} ms  p99 ${fmtMs(r.p99)} ms  rss ${r.peakRssMb.toFixed(0)} MB  cpu srv ${fmtPct(r.serverCpu)} ${fmtInt(r.cpuPerRequestUs)} µs/req (loop ${fmtPct(r.serverBusy)})${split(r)} cli ${fmtPct(r.clientCpu)}${f}  ${r.ok ? "ok" : "FAILED"}: ${r.check}`,
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
  if (!isKind(kind) || isClusterKind(kind))
    throw new Error(`--profile needs a kind of one process: ${[...kinds, ...extraKinds].filter((k) => !isClusterKind(k)).join(", ")}`);
  const seconds = option(args, "--seconds", 5);
  const row = { concurrency: option(args, "--concurrency", 64), keys: option(args, "--keys", 1000) };
  const top = option(args, "--top", 30);
  const clientIndex = args.indexOf("--client");
  const client = parseClient(clientIndex >= 0 ? (args[clientIndex + 1] ?? "") : env.BENCH_CLIENT || "connect");
  const profileDir = fileURLToPath(new URL(`../profiles/${kind}-${Date.now()}`, import.meta.url));
  mkdirSync(profileDir, { recursive: true });
  const directory = durable(kind) ? storeDirectory(env.BENCH_DIR || tmpdir()) : undefined;
  const server = await startServer(kind, { directory, execArgv: ["--cpu-prof", "--cpu-prof-dir", profileDir] });
  let requests = 0;
  try {
    const load = await createLoadGenerator({ baseUrls: [server.url], ...row, client });
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
  // shoal-remote's endpoint inherits --cpu-prof: one profile per process, the runtime's first.
  const files = readdirSync(profileDir)
    .filter((f) => f.endsWith(".cpuprofile"))
    .sort();
  if (files.length === 0) throw new Error(`no .cpuprofile in ${profileDir}`);
  for (const file of files) {
    const path = join(profileDir, file);
    console.log(`profile: ${path} (whole server lifetime: start-up, warm-up and load; open in Chrome DevTools > Performance)\n`);
    console.log(formatProfile(summarizeProfile(path), top, requests));
  }
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
