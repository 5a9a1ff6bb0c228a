import { instanceId, type LogRecord } from "@shoal/sdk/internal";
import { describe, expect, it } from "vitest";
import { createManualClock } from "./clock.js";
import { createExpiry } from "./expiry.js";
import type { InstanceRecord } from "./shard-state.js";

/** Expiry over a manual clock and a table of instances; `due` and `appended` record what it did. */
function expiryWith(instances: Map<string, InstanceRecord>) {
  const clock = createManualClock(1_000);
  const due: string[] = [];
  const appended: LogRecord[] = [];
  const expiry = createExpiry({
    clock,
    instance: (type, key) => instances.get(instanceId(type, key)),
    due: (type, key) => due.push(instanceId(type, key)),
    append: async (records) => {
      appended.push(...records);
    },
  });
  return { clock, due, appended, expiry };
}

describe("expiry", () => {
  it("fires an instance's timer at its time; arming it again replaces the earlier one", async () => {
    const { clock, due, expiry } = expiryWith(new Map());
    expiry.arm("t", "k", 1_100);
    expiry.arm("t", "k", 1_300);
    await clock.advance(200);
    expect(due).toEqual([]);
    await clock.advance(100);
    expect(due).toEqual([instanceId("t", "k")]);
  });

  it("cancelAll stops every timer", async () => {
    const { clock, due, expiry } = expiryWith(new Map());
    expiry.arm("t", "k", 1_100);
    expiry.cancelAll();
    await clock.advance(500);
    expect(due).toEqual([]);
  });

  it("clears a state only when it is due", async () => {
    const instances = new Map<string, InstanceRecord>();
    const { clock, appended, expiry } = expiryWith(instances);
    instances.set(instanceId("t", "k"), { type: "t", key: "k", state: new Uint8Array([1]), expiresAtMs: 1_500 });
    expiry.expire("t", "k");
    expiry.expire("t", "gone");
    expect(appended).toEqual([]);
    await clock.advance(500);
    expiry.expire("t", "k");
    expect(appended).toHaveLength(1);
    const record = appended[0]?.kind;
    expect(record?.case === "commit" ? record.value.stateWrites.map((w) => [w.address?.key, w.clear]) : undefined).toEqual([["k", true]]);
  });
});
