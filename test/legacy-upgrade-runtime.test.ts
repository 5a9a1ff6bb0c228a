// The runtime started on a copy of a data directory the old runtime wrote
// (test/fixtures/legacy-log, see make-legacy-log.mjs): the local backend
// converts it at open, and the runtime serves what the old one had committed.
import { cpSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createRegistry, fromBinary } from "@bufbuild/protobuf";
import { createRouterTransport } from "@connectrpc/connect";
import { createLocalStorage, createManualClock, createRuntime, type Egress } from "@shoal/runtime";
import { createFunctionClient } from "@shoal/sdk";
import { afterEach, describe, expect, it } from "vitest";
import { abandonedAfterMs } from "../examples/shopping-cart/src/cart.js";
import { CartFunction } from "../examples/shopping-cart/src/gen/shop/v1/cart_shoal.js";
import { InventoryFunction } from "../examples/shopping-cart/src/gen/shop/v1/inventory_shoal.js";
import shop from "../examples/shopping-cart/src/module.js";
import { repoRoot } from "./support/processes.js";

const fixture = `${repoRoot}test/fixtures/legacy-log/shoal`;
let dir = "";
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe("the runtime on a directory the old runtime wrote", () => {
  /** The clock of the fixture: 2026-01-01T00:00Z, when make-legacy-log.mjs ran its requests. */
  const written = Date.UTC(2026, 0, 1);

  it("serves the converted state: instances, the idempotency key's reply, the in-flight call, the unacknowledged send and the delayed reminders", async () => {
    dir = mkdtempSync(join(tmpdir(), "shoal-legacy-runtime-"));
    cpSync(fixture, dir, { recursive: true });
    const clock = createManualClock(written + 2 * 60_000);
    const registry = createRegistry(...shop.implementations.map((i) => i.fn.service.file));
    const egressed: string[] = [];
    const capture: Egress = {
      async deliver(m) {
        const schema = registry.getMessage(m.typeName);
        if (schema?.typeName === "shop.v1.CartAbandoned")
          egressed.push((fromBinary(schema, m.payload) as unknown as { userId: string }).userId);
      },
    };
    const runtime = createRuntime({
      functions: shop,
      storage: await createLocalStorage({ directory: dir, logger: { info() {}, warn() {} } }),
      shards: 4,
      clock,
      logger: "silent",
      defaultEgress: capture,
    });
    try {
      await runtime.start();
      const transport = createRouterTransport(runtime.routes);
      const cart = createFunctionClient(CartFunction, transport);
      const settle = async () => {
        for (let i = 0; i < 20; i++) {
          await runtime.whenIdle();
          await new Promise((resolve) => setTimeout(resolve, 5));
        }
      };
      await settle();

      // The state of the snapshot plus the records after it.
      expect(runtime.stateOf(CartFunction, "alice")?.items).toEqual({ apple: 2, pear: 1 });
      expect(runtime.stateOf(CartFunction, "dave")?.items).toEqual({ apple: 1 });
      // Bob's AddItem, pending when the old node stopped, ran again: its call to melon's shard went through.
      expect(runtime.stateOf(CartFunction, "bob")?.items).toEqual({ melon: 1 });
      expect(runtime.stateOf(InventoryFunction, "melon")?.available).toBe(9);
      // The send left unacknowledged in shard 0's outbox was delivered: dave's reminder ran.
      expect(egressed).toEqual(["dave"]);

      // The same Idempotency-Key gets the first reply, without running AddItem again.
      const replay = await cart.addItem({ userId: "alice", sku: "apple", quantity: 2 }, { idempotencyKey: "k1" });
      expect(replay.items).toEqual({ apple: 2 });
      expect(runtime.stateOf(CartFunction, "alice")?.items).toEqual({ apple: 2, pear: 1 });
      expect(runtime.stateOf(InventoryFunction, "apple")?.available).toBe(7);

      // The delayed reminders fire at their time: alice's and dave's from the old log, bob's from his re-run.
      await clock.set(written + abandonedAfterMs + 3 * 60_000);
      await settle();
      expect([...egressed].sort()).toEqual(["alice", "bob", "dave", "dave"]);
      expect(runtime.stateOf(CartFunction, "alice")?.reminder).toBe("");
    } finally {
      await runtime.close();
    }
  });
});
