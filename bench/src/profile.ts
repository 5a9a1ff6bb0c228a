import { readFileSync } from "node:fs";
import { relative } from "node:path";
import { fileURLToPath } from "node:url";

/** The parts of a V8 `.cpuprofile` (written by `node --cpu-prof`) this summary reads. */
interface CpuProfile {
  readonly nodes: ReadonlyArray<{
    readonly id: number;
    readonly callFrame: { readonly functionName: string; readonly url: string; readonly lineNumber: number; readonly columnNumber: number };
    readonly children?: readonly number[];
  }>;
  readonly samples: readonly number[];
  readonly timeDeltas: readonly number[];
}

export type Category =
  | "shoal-runtime"
  | "shoal-sdk"
  | "bench"
  | "connect"
  | "protobuf"
  | "pino"
  | "other-deps"
  | "node"
  | "native"
  | "gc"
  | "idle"
  | "program";

const repoRoot = fileURLToPath(new URL("../../", import.meta.url));

/** Which code a frame belongs to, by its script URL. */
export function categoryOf(functionName: string, url: string): Category {
  if (functionName === "(garbage collector)") return "gc";
  if (functionName === "(idle)") return "idle";
  if (functionName === "(program)" || functionName === "(root)") return "program";
  if (url.includes("/packages/runtime/dist/")) return "shoal-runtime";
  if (url.includes("/packages/sdk/dist/")) return "shoal-sdk";
  if (url.includes("/bench/dist/")) return "bench";
  if (url.includes("/@connectrpc/")) return "connect";
  if (url.includes("/@bufbuild/protobuf/")) return "protobuf";
  if (/\/(pino|sonic-boom|thread-stream|pino-std-serializers)\//.test(url)) return "pino";
  if (url.includes("/node_modules/")) return "other-deps";
  if (url.startsWith("node:")) return "node";
  return "native";
}

function shortUrl(url: string): string {
  if (url === "") return "(native)";
  const path = url.startsWith("file://") ? fileURLToPath(url) : url;
  if (!path.startsWith("/")) return path;
  const rel = relative(repoRoot, path);
  return rel.replace(/^node_modules\//, "");
}

export interface FunctionTime {
  readonly name: string;
  readonly where: string;
  readonly category: Category;
  selfMs: number;
  totalMs: number;
}

export interface ProfileSummary {
  /** Sampled time, idle excluded. */
  readonly busyMs: number;
  readonly idleMs: number;
  readonly byCategory: ReadonlyMap<Category, number>;
  /** Inclusive time of frames per category, each sample counted once per category. */
  readonly totalByCategory: ReadonlyMap<Category, number>;
  readonly functions: readonly FunctionTime[];
}

/** Self and total time per function (by name and source position) and self time per category. */
export function summarizeProfile(path: string): ProfileSummary {
  const profile = JSON.parse(readFileSync(path, "utf8")) as CpuProfile;
  const parent = new Map<number, number>();
  const byId = new Map<number, CpuProfile["nodes"][number]>();
  for (const node of profile.nodes) {
    byId.set(node.id, node);
    for (const child of node.children ?? []) parent.set(child, node.id);
  }
  const functions = new Map<string, FunctionTime>();
  const keyOf = new Map<number, FunctionTime>();
  for (const node of profile.nodes) {
    const { functionName, url, lineNumber, columnNumber } = node.callFrame;
    const name = functionName === "" ? "(anonymous)" : functionName;
    const where = url === "" ? "(native)" : `${shortUrl(url)}:${lineNumber + 1}:${columnNumber + 1}`;
    const id = `${name}@${where}`;
    let entry = functions.get(id);
    if (entry === undefined) {
      entry = { name, where, category: categoryOf(functionName, url), selfMs: 0, totalMs: 0 };
      functions.set(id, entry);
    }
    keyOf.set(node.id, entry);
  }
  const byCategory = new Map<Category, number>();
  const totalByCategory = new Map<Category, number>();
  let busyMs = 0;
  let idleMs = 0;
  profile.samples.forEach((sample, i) => {
    // timeDeltas[i] is the time before sample i; attribute the next delta to it.
    const ms = (profile.timeDeltas[i + 1] ?? 0) / 1000;
    const self = keyOf.get(sample);
    if (self === undefined) return;
    self.selfMs += ms;
    byCategory.set(self.category, (byCategory.get(self.category) ?? 0) + ms);
    if (self.category === "idle") idleMs += ms;
    else busyMs += ms;
    const seen = new Set<FunctionTime>();
    const seenCategories = new Set<Category>();
    for (let id: number | undefined = sample; id !== undefined; id = parent.get(id)) {
      const entry = keyOf.get(id);
      if (entry === undefined || seen.has(entry)) continue;
      seen.add(entry);
      entry.totalMs += ms;
      if (!seenCategories.has(entry.category)) {
        seenCategories.add(entry.category);
        totalByCategory.set(entry.category, (totalByCategory.get(entry.category) ?? 0) + ms);
      }
    }
  });
  return { busyMs, idleMs, byCategory, totalByCategory, functions: [...functions.values()] };
}

const pct = (part: number, whole: number) => `${((100 * part) / whole).toFixed(1).padStart(5)}%`;

/** A plain-text report: time per category, top functions by self time, top Shoal functions by total time. */
export function formatProfile(summary: ProfileSummary, top: number, requests?: number): string {
  const { busyMs } = summary;
  const out: string[] = [];
  const perRequest = (ms: number) =>
    requests !== undefined && requests > 0 ? `  ${((ms * 1000) / requests).toFixed(0).padStart(5)} µs/req` : "";
  out.push(
    `busy ${busyMs.toFixed(0)} ms, idle ${summary.idleMs.toFixed(0)} ms (percentages are of busy time)` +
      (requests !== undefined ? `; ${requests} requests served, ${((busyMs * 1000) / requests).toFixed(0)} µs busy per request` : ""),
  );
  out.push("", "self time by category (total = inclusive time of frames in that category):");
  const categories = [...summary.byCategory].filter(([c]) => c !== "idle").sort((a, b) => b[1] - a[1]);
  for (const [category, ms] of categories) {
    out.push(
      `  ${category.padEnd(14)} self ${pct(ms, busyMs)}${perRequest(ms)}   total ${pct(summary.totalByCategory.get(category) ?? 0, busyMs)}`,
    );
  }
  out.push("", `top ${top} functions by self time:`);
  const bySelf = summary.functions.filter((f) => f.category !== "idle").sort((a, b) => b.selfMs - a.selfMs);
  for (const f of bySelf.slice(0, top)) {
    out.push(`  ${pct(f.selfMs, busyMs)} self ${pct(f.totalMs, busyMs)} total  ${f.category.padEnd(13)} ${f.name}  ${f.where}`);
  }
  out.push("", `top ${top} Shoal functions by total (inclusive) time:`);
  const shoal = summary.functions
    .filter((f) => f.category === "shoal-runtime" || f.category === "shoal-sdk")
    .sort((a, b) => b.totalMs - a.totalMs);
  for (const f of shoal.slice(0, top)) {
    out.push(`  ${pct(f.totalMs, busyMs)} total ${pct(f.selfMs, busyMs)} self  ${f.category.padEnd(13)} ${f.name}  ${f.where}`);
  }
  return out.join("\n");
}
