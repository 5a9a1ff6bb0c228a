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
  /** Rejects every request still waiting (the node is closing). */
  failAll(error: Error): void;
}

interface Pending {
  resolve(answer: Answer): void;
  reject(error: Error): void;
}

/** A node's reply channel. */
export function createReplyChannel(): ReplyChannel {
  const pending = new Map<string, Set<Pending>>();
  return {
    expect(request) {
      let entry: Pending | undefined;
      const answer = new Promise<Answer>((resolve, reject) => {
        entry = { resolve, reject };
      });
      const waiting = entry as Pending;
      const set = pending.get(request) ?? new Set<Pending>();
      pending.set(request, set);
      set.add(waiting);
      return {
        answer,
        cancel(error) {
          waiting.reject(error);
          set.delete(waiting);
          if (set.size === 0 && pending.get(request) === set) pending.delete(request);
        },
      };
    },
    deliver(request, outcome, output) {
      const set = pending.get(request);
      if (set === undefined) return;
      pending.delete(request);
      for (const p of set) {
        if (outcome instanceof Error) p.reject(outcome);
        else p.resolve({ reply: outcome, output });
      }
    },
    failAll(error) {
      const all = [...pending.values()];
      pending.clear();
      for (const set of all) for (const p of set) p.reject(error);
    },
  };
}
