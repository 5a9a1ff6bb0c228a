import { create } from "@bufbuild/protobuf";
import { StatusResponseSchema } from "@shoal/sdk/internal";
import { expect, it } from "vitest";
import { statusText } from "./status-format.js";

it("shows a shard's lease held until it expires, and free (with its last holder) once released or expired", () => {
  const nowMs = 1_000_000;
  const shard = (n: number, leaseExpiresAtMs: number) => ({
    shard: n,
    epoch: 3n,
    leaseOwner: "node-b",
    leaseEpoch: 3n,
    leaseExpiresAtMs: BigInt(leaseExpiresAtMs),
    walSequence: 10n,
  });
  const status = create(StatusResponseSchema, {
    node: "node-a",
    shards: 3,
    cluster: {
      membership: true,
      nodes: [
        {
          node: "node-b",
          ingress: "http://127.0.0.1:1",
          heartbeatAtMs: BigInt(nowMs),
          shards: [shard(0, nowMs + 2_000), shard(1, 0), shard(2, nowMs - 1)],
        },
      ],
    },
  });
  const text = statusText(status, nowMs);
  expect(text).toMatch(/^\s+0 node-b\s+3\s+node-b@3\s/m);
  expect(text).toMatch(/^\s+1 node-b\s+3\s+free \(node-b@3\)\s/m);
  expect(text).toMatch(/^\s+2 node-b\s+3\s+free \(node-b@3\)\s/m);
});
