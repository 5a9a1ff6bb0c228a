import { Code } from "@connectrpc/connect";
import { errorReply } from "@shoal/sdk/internal";
import { describe, expect, it } from "vitest";
import { createReplyChannel } from "./reply-channel.js";

describe("reply channel", () => {
  it("answers the one request awaiting an id, and only once", async () => {
    const channel = createReplyChannel();
    const { answer } = channel.expect("r1");
    const reply = errorReply(Code.NotFound, "no");
    channel.deliver("r1", reply);
    channel.deliver("r1", errorReply(Code.Internal, "late"));
    expect((await answer).reply).toBe(reply);
  });

  it("answers every request awaiting one id, and none once one of them is cancelled", async () => {
    const channel = createReplyChannel();
    const first = channel.expect("r1");
    const second = channel.expect("r1");
    const third = channel.expect("r1");
    second.cancel(new Error("not routed"));
    const reply = errorReply(Code.NotFound, "no");
    channel.deliver("r1", reply);
    expect((await first.answer).reply).toBe(reply);
    await expect(second.answer).rejects.toThrow("not routed");
    expect((await third.answer).reply).toBe(reply);
  });

  it("forgets a cancelled request, rejects with a delivered error, and fails all on close", async () => {
    const channel = createReplyChannel();
    const cancelled = channel.expect("r1");
    cancelled.cancel(new Error("not routed"));
    await expect(cancelled.answer).rejects.toThrow("not routed");
    const failed = channel.expect("r2");
    channel.deliver("r2", new Error("unavailable"));
    await expect(failed.answer).rejects.toThrow("unavailable");
    const a = channel.expect("r3");
    const b = channel.expect("r3");
    const c = channel.expect("r4");
    channel.failAll(new Error("closing"));
    for (const w of [a, b, c]) await expect(w.answer).rejects.toThrow("closing");
    // A request registered after a cancellation of the same id is answered normally.
    const again = channel.expect("r1");
    const reply = errorReply(Code.NotFound, "no");
    channel.deliver("r1", reply);
    expect((await again.answer).reply).toBe(reply);
  });
});
