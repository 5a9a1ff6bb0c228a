import { describe, expect, it } from "vitest";
import { createMailboxes } from "./mailboxes.js";

/** A promise with its resolve function outside. */
function gate() {
  let open = () => {};
  const opened = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { opened, open };
}

describe("mailboxes", () => {
  it("runs an instance's items one at a time in arrival order, and other instances' items beside them", async () => {
    const events: string[] = [];
    const first = gate();
    const mailboxes = createMailboxes<string>({
      run: (item) => {
        events.push(`start ${item}`);
        if (item !== "a1") return undefined;
        return first.opened.then(() => {
          events.push("end a1");
        });
      },
      stopped: () => false,
    });
    mailboxes.enqueue("a", "a1");
    mailboxes.enqueue("a", "a2");
    mailboxes.enqueue("b", "b1");
    await new Promise<void>((resolve) => setImmediate(resolve));
    expect(events).toEqual(["start a1", "start b1"]);
    first.open();
    await new Promise<void>((resolve) => setImmediate(resolve));
    expect(events).toEqual(["start a1", "start b1", "end a1", "start a2"]);
  });

  it("runs nothing more once the shard stopped", async () => {
    const ran: string[] = [];
    let stopped = false;
    const first = gate();
    const mailboxes = createMailboxes<string>({
      run: (item) => {
        ran.push(item);
        return first.opened;
      },
      stopped: () => stopped,
    });
    mailboxes.enqueue("a", "a1");
    mailboxes.enqueue("a", "a2");
    stopped = true;
    first.open();
    await new Promise<void>((resolve) => setImmediate(resolve));
    expect(ran).toEqual(["a1"]);
  });

  it("whenIdle resolves once every started invocation finished", async () => {
    const mailboxes = createMailboxes<string>({ run: () => undefined, stopped: () => false });
    await mailboxes.whenIdle();
    mailboxes.started();
    mailboxes.started();
    let idle = false;
    const waiting = mailboxes.whenIdle().then(() => {
      idle = true;
    });
    mailboxes.finished();
    await new Promise<void>((resolve) => setImmediate(resolve));
    expect(idle).toBe(false);
    mailboxes.finished();
    await waiting;
    expect(idle).toBe(true);
  });
});
