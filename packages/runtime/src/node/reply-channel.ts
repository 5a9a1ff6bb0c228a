import type { Message } from "@bufbuild/protobuf";
import type { Reply } from "@shoal/sdk/internal";

/** The committed reply to a request, and the reply message itself when the caller is in process. */
export interface Answer {
  readonly reply: Reply;
  readonly output?: Message;
}

/**
 * A node's requests that await a reply, by request id: where replies sent to
 * this node's reply-to address (`ReplyTo.ingress`, a call's node) arrive.
 * Several requests may await one id (retries with the same Idempotency-Key):
 * a reply answers all of them.
 */
export interface ReplyChannel {
  /** Registers a request before it is routed; `cancel` rejects and drops it when routing failed. */
  expect(request: string): { readonly answer: Promise<Answer>; cancel(error: Error): void };
  /** Answers every request awaiting `request`: with the reply, or rejects with the error. */
  deliver(request: string, outcome: Reply | Error, output?: Message): void;
  /**
   * Records that `request` was handed to `node`, the owner of `shard`, which
   * will send its reply here; `failForwarded` fails it if that node is gone first.
   */
  forwarded(request: string, node: string, shard: number): void;
  /** Rejects the requests forwarded to `node` for `shard` that still wait: that node no longer owns it. */
  failForwarded(node: string, shard: number, error: Error): void;
  /** Rejects every request still waiting (the node is closing). */
  failAll(error: Error): void;
}

interface Pending {
  resolve(answer: Answer): void;
  reject(error: Error): void;
}

/** A node's reply channel. */
export function createReplyChannel(): ReplyChannel {
  // Nearly every request id has one waiter: a list only for the few that have more.
  const pending = new Map<string, Pending | Pending[]>();
  /** The node and shard each forwarded request that still waits went to. */
  const forwardedTo = new Map<string, { readonly node: string; readonly shard: number }>();
  const remove = (request: string, waiting: Pending) => {
    const entry = pending.get(request);
    if (entry === waiting) pending.delete(request);
    else if (Array.isArray(entry)) {
      const i = entry.indexOf(waiting);
      if (i >= 0) entry.splice(i, 1);
      if (entry.length === 0) pending.delete(request);
    }
    if (!pending.has(request)) forwardedTo.delete(request);
  };
  const settle = (p: Pending, outcome: Reply | Error, output: Message | undefined) => {
    if (outcome instanceof Error) p.reject(outcome);
    else p.resolve({ reply: outcome, output });
  };
  return {
    expect(request) {
      let entry: Pending | undefined;
      const answer = new Promise<Answer>((resolve, reject) => {
        entry = { resolve, reject };
      });
      const waiting = entry as Pending;
      const current = pending.get(request);
      if (current === undefined) pending.set(request, waiting);
      else if (Array.isArray(current)) current.push(waiting);
      else pending.set(request, [current, waiting]);
      return {
        answer,
        cancel(error) {
          waiting.reject(error);
          remove(request, waiting);
        },
      };
    },
    deliver(request, outcome, output) {
      const entry = pending.get(request);
      if (entry === undefined) return;
      pending.delete(request);
      forwardedTo.delete(request);
      if (Array.isArray(entry)) for (const p of entry) settle(p, outcome, output);
      else settle(entry, outcome, output);
    },
    forwarded(request, node, shard) {
      if (pending.has(request)) forwardedTo.set(request, { node, shard });
    },
    failForwarded(node, shard, error) {
      for (const [request, to] of [...forwardedTo]) if (to.node === node && to.shard === shard) this.deliver(request, error);
    },
    failAll(error) {
      const all = [...pending.values()];
      pending.clear();
      forwardedTo.clear();
      for (const entry of all) for (const p of Array.isArray(entry) ? entry : [entry]) p.reject(error);
    },
  };
}
