/**
 * A shard's per-instance mailboxes: the items of one instance (an exclusive
 * handler's messages, its state's expiry) run one at a time, in the order they
 * arrived, so an invocation never sees another one's state half written.
 * They also count the invocations running, in a mailbox or not, for `whenIdle`.
 */
export interface Mailboxes<Item> {
  /** Queues an item for instance `id`, and starts running that instance's items unless they run already. */
  enqueue(id: string, item: Item): void;
  /** The items queued for instance `id` that have not started, in order (the running one is not among them). */
  queued(id: string): readonly Item[];
  /** Takes `item` out of instance `id`'s queue if it has not started; whether it was there. */
  remove(id: string, item: Item): boolean;
  /** An invocation started (exclusive or not): the shard is busy until `finished`. */
  started(): void;
  /** An invocation that `started` has finished. */
  finished(): void;
  /** Resolves when no invocation is running (for tests and shutdown). */
  whenIdle(): Promise<void>;
  /** Whether instance `id` has items queued or running. */
  busy(id: string): boolean;
}

/** What the mailboxes need from their shard. */
export interface MailboxOptions<Item> {
  /** Runs one item; the instance's next item waits for the promise it returns, if any. It must not reject. */
  run(item: Item): Promise<void> | undefined;
  /** Whether the shard stopped (closed or failed): its mailboxes then run nothing more. */
  stopped(): boolean;
}

interface Mailbox<Item> {
  readonly items: Item[];
  running: boolean;
}

/** Creates the mailboxes of one shard. */
export function createMailboxes<Item>(options: MailboxOptions<Item>): Mailboxes<Item> {
  const mailboxes = new Map<string, Mailbox<Item>>();
  let running = 0;
  const idle: Array<() => void> = [];

  async function pump(id: string, mailbox: Mailbox<Item>) {
    mailbox.running = true;
    try {
      for (let item = mailbox.items.shift(); item !== undefined; item = mailbox.items.shift()) {
        if (options.stopped()) return;
        const done = options.run(item);
        if (done !== undefined) await done;
      }
    } finally {
      mailbox.running = false;
      if (mailbox.items.length === 0) mailboxes.delete(id);
    }
  }

  return {
    enqueue(id, item) {
      let mailbox = mailboxes.get(id);
      if (mailbox === undefined) {
        mailbox = { items: [], running: false };
        mailboxes.set(id, mailbox);
      }
      mailbox.items.push(item);
      if (!mailbox.running) void pump(id, mailbox);
    },
    queued(id) {
      return mailboxes.get(id)?.items ?? [];
    },
    remove(id, item) {
      const items = mailboxes.get(id)?.items;
      const at = items?.indexOf(item) ?? -1;
      if (items === undefined || at < 0) return false;
      items.splice(at, 1);
      return true;
    },
    started() {
      running++;
    },
    finished() {
      running--;
      if (running === 0) for (const resolve of idle.splice(0)) resolve();
    },
    busy(id) {
      return mailboxes.has(id);
    },
    whenIdle() {
      if (running === 0) return Promise.resolve();
      return new Promise((resolve) => idle.push(resolve));
    },
  };
}
