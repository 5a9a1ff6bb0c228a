// `BENCH_KINDS=cluster npm run bench` (bench/src/cluster.ts) run tiny, so the
// cluster kinds cannot rot between the runs that record their figures in
// bench/RESULTS.md. It starts its own nats-servers and nodes and kills them by
// pid. Nothing here asserts a figure: only that every configuration served
// load, passed its check (every acknowledged add there, also after kill -9 of
// every node) and was reported with its CPU split. Runs the built bench.
import { expect, it } from "vitest";
import { repoRoot, start } from "./support/processes.js";

// One node and three on one nats-server: R3 adds only time here (the cluster tests cover R3).
const kinds = ["cluster-1n-r1", "cluster-3n-r1"];

it("the cluster kinds serve load, keep every acknowledged add across kill -9 of every node, and report CPU per request of nodes and nats-servers", async () => {
  const child = start(process.execPath, [`${repoRoot}bench/dist/run.js`], {
    env: { BENCH_KINDS: kinds.join(","), BENCH_ROWS: "2x20", BENCH_SECONDS: "1", BENCH_WARMUP_SECONDS: "0.5" },
  });
  // Stopped (SIGINT: it kills the servers it started) before the test's own timeout, so that a run that hangs shows what it printed.
  const stop = setTimeout(() => child.process.kill("SIGINT"), 170_000);
  const code = await child.exited;
  clearTimeout(stop);
  expect(code, `${child.stdout()}\n${child.stderr()}`).toBe(0);
  const report = child.stdout();
  for (const kind of kinds) {
    expect(report).toMatch(
      new RegExp(
        `^\\| 2 \\| 20 \\| ${kind} \\| [\\d,]+ \\| .* \\| ok: Σ=[\\d,]+ = acked; after kill -9 of every node, on empty directories: same .*\\|$`,
        "m",
      ),
    );
    // req/s, p50, p99, then CPU µs/req of the nodes, the nats-servers and both, and RSS of each group.
    expect(report).toMatch(
      new RegExp(`^\\| 2 \\| 20 \\| ${kind} \\| [\\d,]+ \\|( [\\d.]+ \\|){2}( [\\d,]+ \\|){2} [1-9][\\d,]* \\|( [1-9]\\d* \\|){2}$`, "m"),
    );
  }
}, 180_000);
