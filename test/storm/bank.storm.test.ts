// The long fault storms (npm run test:storm; CI runs them after npm test):
// over 100 SIGKILLs, a SIGTERM storm, disk-full cycles and SIGKILLs of a
// runtime and its remote function endpoint, each checked by
// test/storm/bank-storm.ts. A failure prints the storm's seed; run it again
// with SHOAL_STORM_SEED=<seed> npx vitest run -c vitest.storm.config.ts -t <name>.
import { expect, it } from "vitest";
import { type BankStormOptions, runBankStorm } from "./bank-storm.js";

const storms: BankStormOptions[] = [
  { name: "SIGKILL, 1 shard", shards: 1, stops: 50, killDuringRecovery: true },
  { name: "SIGKILL, 256 shards", shards: 256, stops: 50, killDuringRecovery: true },
  {
    name: "SIGTERM storm, 8 shards",
    shards: 8,
    stops: 25,
    signal: "SIGTERM",
    killDuringRecovery: true,
  },
  { name: "disk full, 8 shards", shards: 8, diskFull: { cycles: 6, sizeMiB: 16 } },
  {
    name: "remote functions: 20 SIGKILLs of the runtime and 20 of the endpoint, 8 shards",
    shards: 8,
    stops: 20,
    remote: { endpointKills: 20 },
  },
];

for (const storm of storms) {
  it(storm.name, { timeout: 600_000 }, async () => {
    const report = await runBankStorm(storm);
    expect(report.failures, report.summary).toEqual([]);
  });
}
