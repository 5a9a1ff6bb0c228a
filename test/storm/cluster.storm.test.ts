// The cluster's full crash test (issue 10, item 5; npm run test:storm): 3
// nats-servers (R3) and 3 bank nodes under load through every ingress, 20
// SIGKILLs of nodes, 10 of nats-servers (one at a time, each restarted) and a
// node stopped for longer than its lease, checked by test/storm/cluster-storm.ts.
// A failure prints the storm's seed; run it again with
// SHOAL_STORM_SEED=<seed> npx vitest run -c vitest.storm.config.ts test/storm/cluster.storm.test.ts.
import { expect, it } from "vitest";
import { runClusterStorm } from "./cluster-storm.js";

it("cluster: 20 node SIGKILLs, 10 nats-server SIGKILLs, a SIGSTOP longer than the lease, 3 nodes, 8 shards", {
  timeout: 900_000,
}, async () => {
  const report = await runClusterStorm({ name: "full", nodeKills: 20, natsKills: 10, pauses: 1, deadlineMs: 840_000 });
  expect(report.failures, report.summary).toEqual([]);
});
