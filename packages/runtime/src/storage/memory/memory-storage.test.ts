import { describeShardStorageConformance } from "../shard-storage.conformance.js";
import { createMemoryStorage } from "./memory-storage.js";

describeShardStorageConformance(
  "memory",
  async () => ({
    storage: createMemoryStorage(),
    async cleanup() {},
  }),
  { survivesRestart: false },
);
