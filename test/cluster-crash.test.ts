// The cluster's crash test, short (issue 10, item 5): 3 nats-servers (R3) and
// 3 bank nodes under load through every ingress, with SIGKILLs of nodes and
// of nats-servers and a node stopped for longer than its lease
// (test/storm/cluster-storm.ts runs it and checks; npm run test:storm runs
// the full storm: 20 node SIGKILLs, 10 nats-server SIGKILLs, 1 SIGSTOP).
import { expect, it } from "vitest";
import { runClusterStorm } from "./storm/cluster-storm.js";

it("keeps every transfer exactly once across 3 node SIGKILLs, 2 nats-server SIGKILLs and a SIGSTOP longer than the lease", {
  timeout: 300_000,
}, async () => {
  const report = await runClusterStorm({ name: "short", nodeKills: 3, natsKills: 2, pauses: 1 });
  expect(report.failures, report.summary).toEqual([]);
});
