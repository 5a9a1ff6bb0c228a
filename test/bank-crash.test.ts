// The crash test of DESIGN §7: the bank runs as a separate runtime process on
// the local durable store, a separate client process transfers money between
// accounts with idempotency keys and retries, and the runtime is SIGKILLed at
// random moments and restarted. In the end no money is created or lost and
// every acknowledged transfer is applied exactly once on both accounts
// (test/storm/bank-storm.ts runs it and checks; npm run test:storm runs the
// long storms). The last test runs the bank's functions in a remote endpoint
// process and SIGKILLs both it and the runtime (`shoal serve`).
import { expect, it } from "vitest";
import { runBankStorm } from "./storm/bank-storm.js";

const kills = Number(process.env.SHOAL_CRASH_KILLS ?? 20);

it(`keeps every transfer exactly once across ${kills} SIGKILLs`, { timeout: 300_000 }, async () => {
  const report = await runBankStorm({ name: "crash test", shards: 8, stops: kills });
  expect(report.failures, report.summary).toEqual([]);
});

it("keeps every transfer exactly once across SIGKILLs during recovery", {
  timeout: 300_000,
}, async () => {
  const report = await runBankStorm({ name: "recovery kills", shards: 1, stops: 10, killDuringRecovery: true });
  expect(report.failures, report.summary).toEqual([]);
});

it("keeps every transfer exactly once with remote functions, across 3 SIGKILLs of the runtime and 3 of the endpoint", {
  timeout: 300_000,
}, async () => {
  const report = await runBankStorm({ name: "remote crash test", shards: 8, stops: 3, remote: { endpointKills: 3 } });
  expect(report.failures, report.summary).toEqual([]);
});
