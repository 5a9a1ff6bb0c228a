// `npm run bench:instances` (bench/src/instances.ts) run with tiny counts, so
// the script cannot rot between the runs that record its figures. Nothing
// here asserts a figure: only that every phase ran and was reported.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, expect, it } from "vitest";
import { repoRoot, start } from "./support/processes.js";

let scratch: string | undefined;
afterEach(() => {
  if (scratch !== undefined) rmSync(scratch, { recursive: true, force: true });
});

const rows = [
  /^\| create 2,000 instances \| [\d.]+ s \([\d,]+\/s\) \|/m,
  /^\| RSS right after creating \| \d+ MB \(anon \d+ MB, files \d+ MB\) \|/m,
  /^\| RSS after creating, idle [\d.]+ s, after a GC \| \d+ MB \(anon \d+ MB, files \d+ MB; JS heap used \d+ MB\) \| ≤ 500 MB: (met|MISSED) \|$/m,
  /^\| data on disk after creating \| \d+ MB \(file sizes \d+ MB\) \|/m,
  /^\| restart after SIGKILL: spawn to the first request served on an existing instance \| \d+ ms \(runtime start \d+ ms.* \| ≤ 1 s: (met|MISSED) \|$/m,
  /^\| RSS after the SIGKILL restart, idle, after a GC \| \d+ MB \(anon \d+ MB, files \d+ MB; JS heap used \d+ MB\) \| ≤ 500 MB: (met|MISSED) \|$/m,
  /^\| RSS after touching 200 random instances, after a GC \| \d+ MB \(anon \d+ MB, files \d+ MB; JS heap used \d+ MB\) \| ≤ 500 MB: (met|MISSED) \|$/m,
  /^\| restart after SIGTERM \(closing took \d+ ms\): spawn to the first request served \| \d+ ms .* \| ≤ 1 s: (met|MISSED) \|$/m,
  /^\| RSS after the SIGTERM restart, idle, after a GC \| \d+ MB \(anon \d+ MB, files \d+ MB; JS heap used \d+ MB\) \| ≤ 500 MB: (met|MISSED) \|$/m,
  /^\| 400 Item.Touch requests, each with its own Idempotency-Key \| [\d.]+ s/m,
  // The verdict is on anonymous memory; the pages of LMDB's map are reported beside it, with how many are dirty.
  /^\| RSS with idempotency keys, after a GC: start \/ middle \/ end \| \d+ MB \/ \d+ MB \/ \d+ MB \(anon \d+ MB \/ \d+ MB \/ \d+ MB; files \d+ MB \/ \d+ MB \/ \d+ MB, of which data\.mdb mapped \d+ MB \/ \d+ MB \/ \d+ MB, dirty \d+ MB at the end; JS heap used .*\): anon -?[\d,]+ B, files -?[\d,]+ B, total -?[\d,]+ B per request over the second half \| bounded \(anon < 190 B\/request; files not counted\): (met|MISSED) \|$/m,
  /^\| RSS with idempotency keys, every 2 s \(requests: MB\) \| 0: \d+.*, 400: \d+ \|/m,
  /^\| data on disk at the end \| \d+ MB \(file sizes \d+ MB\) \|/m,
];

it("bench:instances creates, idles, restarts twice and sends idempotent requests, reporting every figure", async () => {
  scratch = mkdtempSync(join(tmpdir(), "shoal-bench-instances-test-"));
  const results = join(scratch, "RESULTS.md");
  const args = ["--instances", "2000", "--fanout", "200", "--idle-ms", "100", "--quiet-ms", "300", "--touch", "200", "--idempotent", "400"];
  const child = start(process.execPath, [
    `${repoRoot}bench/dist/instances.js`,
    ...args,
    "--dir",
    scratch,
    "--record",
    "--results",
    results,
  ]);
  const code = await child.exited;
  expect(code, child.stderr()).toBe(0);
  const report = child.stdout();
  for (const row of rows) expect(report).toMatch(row);
  expect(report).toContain(`- command: \`node bench/dist/instances.js ${args.join(" ")}`);
  expect(readFileSync(results, "utf8")).toBe(`\n${report}`);
}, 60_000);
