import { JetStreamApiError } from "@nats-io/jetstream";
import { jserrors } from "@nats-io/jetstream/internal";
import { RequestError, TimeoutError } from "@nats-io/transport-node";
import { describe, expect, it } from "vitest";
import { retryPlacement } from "./shard-wal.js";

const noPeers = () => new JetStreamApiError({ code: 400, err_code: 10005, description: "no suitable peers for placement" });

describe("retryPlacement", () => {
  it("creates again while JetStream has no peers to place a replicated stream on, as right after a cluster starts", async () => {
    let attempts = 0;
    const created = await retryPlacement(async () => {
      attempts++;
      if (attempts < 3) throw noPeers();
      return "created";
    });
    expect(created).toBe("created");
    expect(attempts).toBe(3);
  });

  it("asks again while JetStream does not answer, as while a restarted server's streams elect their leaders", async () => {
    const transient = [
      new TimeoutError(),
      new jserrors.JetStreamNotEnabled("jetstream is not enabled", { cause: new RequestError("no responders") }),
    ];
    let attempts = 0;
    const opened = await retryPlacement(async () => {
      const err = transient[attempts++];
      if (err !== undefined) throw err;
      return "opened";
    });
    expect(opened).toBe("opened");
    expect(attempts).toBe(3);
  });

  it("asks again while JetStream answers that it is temporarily unavailable, as while a cluster without quorum elects a meta leader", async () => {
    let attempts = 0;
    const opened = await retryPlacement(async () => {
      attempts++;
      if (attempts < 3)
        throw new JetStreamApiError({ code: 503, err_code: 10008, description: "JetStream system temporarily unavailable" });
      return "opened";
    });
    expect(opened).toBe("opened");
    expect(attempts).toBe(3);
  });

  it("throws at once when JetStream answers that it is not enabled for the account", async () => {
    let attempts = 0;
    const off = new jserrors.JetStreamNotEnabled("jetstream not enabled for account", {
      cause: new JetStreamApiError({ code: 503, err_code: 10039, description: "jetstream not enabled for account" }),
    });
    await expect(
      retryPlacement(async () => {
        attempts++;
        throw off;
      }),
    ).rejects.toBe(off);
    expect(attempts).toBe(1);
  });

  it("throws any other error at once, and no peers once the wait is over", async () => {
    let attempts = 0;
    const other = new JetStreamApiError({ code: 400, err_code: 10058, description: "stream name already in use" });
    await expect(
      retryPlacement(async () => {
        attempts++;
        throw other;
      }),
    ).rejects.toBe(other);
    expect(attempts).toBe(1);
    await expect(
      retryPlacement(async () => {
        throw noPeers();
      }, 250),
    ).rejects.toThrow("no suitable peers for placement");
  });
});
