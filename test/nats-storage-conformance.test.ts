// The shard storage conformance suite against the `nats` backend on real
// nats-server processes: a single server (R1) and a 3-node cluster (R3).
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { NatsConnection } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe } from "vitest";
import { createNatsShardStorage } from "../packages/runtime/src/storage/nats/nats-shard-storage.js";
import { describeShardStorageConformance, type ShardStorageUnderTest } from "../packages/runtime/src/storage/shard-storage.conformance.js";
import { type NatsCluster, startNatsCluster } from "./support/nats-cluster.js";
import { removeNatsPrefix, uniquePrefix, waitForPlacement } from "./support/nats-storage.js";

for (const size of [1, 3] as const) {
  describe(`the nats shard storage on ${size === 1 ? "a single nats-server (R1)" : "a 3-node nats-server cluster (R3)"}`, () => {
    let cluster: NatsCluster;
    let nc: NatsConnection;
    beforeAll(async () => {
      cluster = await startNatsCluster({ size });
      nc = await cluster.connect();
      await waitForPlacement(nc, size);
    });
    afterAll(async () => {
      await nc?.close();
      await cluster?.close();
    });

    describeShardStorageConformance(`nats R${size}`, async (): Promise<ShardStorageUnderTest> => {
      const directory = await mkdtemp(join(tmpdir(), "shoal-nats-local-"));
      const prefix = uniquePrefix();
      // Each instance connects on its own, as a node does: closing one closes its connection.
      const open = () => createNatsShardStorage({ servers: cluster.urls, directory, prefix, ackTimeoutMs: 15_000 });
      return {
        storage: await open(),
        reopen: open,
        async cleanup() {
          await removeNatsPrefix(nc, prefix);
          await rm(directory, { recursive: true, force: true });
        },
      };
    });
  });
}
