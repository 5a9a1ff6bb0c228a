/**
 * The transport between the nodes of a cluster, over core NATS (DESIGN §9).
 *
 * A message for a shard another node owns is a NATS request on
 * `<prefix>.node.<node>.receive` carrying a `NodeDelivery`, and the question
 * what a shard holds for a call (a call cycle across nodes) one on
 * `<prefix>.node.<node>.held` carrying the call's `Envelope`, and those of a
 * search for a call cycle between chains on different nodes on `.waits`,
 * `.break` and `.cancel` (a `NodeCycleQuestion`); the receiving node
 * answers once `NodeEndpoint.receive` settled, with the error class's name
 * when it refused, and the sender rebuilds that error. A reply for a request
 * a node awaits is published on `<prefix>.node.<node>.reply` (`NodeReply`):
 * nobody listening means the node is gone, and its requests failed with it.
 *
 * Nothing here is durable: a message is durable once the owner's shard took
 * it (its WAL), and a sender that hears nothing (no responders, a timeout)
 * gets `ShardUnavailableError` and retries, possibly at another owner. A
 * delivery retried after a timeout may reach its shard twice; shards drop
 * duplicates by source and sequence (outbox), idempotency key or call id.
 */
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import {
  type Envelope,
  EnvelopeSchema,
  NodeCycleQuestionSchema,
  type NodeDeliveryAnswer,
  NodeDeliveryAnswerSchema,
  NodeDeliveryKind,
  NodeDeliverySchema,
  NodeReplySchema,
} from "@shoal/sdk/internal";
import { defaults } from "../config/defaults.js";
import type { Delivery, NodeTransport, ReplyOutcome } from "../node/router.js";
import { ShardUnavailableError } from "../shard/shard-processor.js";
import { RecordEncodingError } from "../storage/storage.js";

/** Options of `createNatsTransport`. */
export interface NatsTransportOptions {
  /** An open connection; the transport does not close it. */
  readonly connection: NatsConnection;
  /** Prefix of the subjects, `<prefix>.node.<node>.receive` and `.reply`. Default `shoal`. */
  readonly prefix?: string;
  /**
   * How long a sender waits for the owner to take a message, in ms, before
   * it fails with ShardUnavailableError (retried). Default 10 000: above a
   * WAL append's acknowledgement timeout, which a one-way send waits for.
   */
  readonly timeoutMs?: number;
  /** Where receive-side failures to answer are reported. Default: none. */
  readonly onError?: (error: unknown) => void;
}

/** The NATS requests between nodes: a message for a shard, and the questions about calls and call cycles. */
type Question = "receive" | "held" | "waits" | "break" | "cancel";

const kinds: Record<Delivery, NodeDeliveryKind> = {
  request: NodeDeliveryKind.REQUEST,
  accept: NodeDeliveryKind.ACCEPT,
  deliver: NodeDeliveryKind.DELIVER,
};
const deliveries = new Map<NodeDeliveryKind, Delivery>(Object.entries(kinds).map(([d, k]) => [k, d as Delivery]));

/** Creates the NATS transport of a cluster node. */
export function createNatsTransport(options: NatsTransportOptions): NodeTransport {
  const nc = options.connection;
  const prefix = options.prefix ?? defaults.storage.prefix;
  const timeout = options.timeoutMs ?? 10_000;
  const subject = (node: string, kind: "reply" | Question) => `${prefix}.node.${node}.${kind}`;
  const about = (envelope: Envelope) => `message ${envelope.id} for ${envelope.target?.type}/${envelope.target?.key}`;

  /** A request to `node`, its answer decoded; its refusal, silence or absence as the sender's error. */
  async function ask(node: string, kind: Question, what: string, data: Uint8Array): Promise<NodeDeliveryAnswer> {
    let answer: Uint8Array;
    try {
      answer = (await nc.request(subject(node, kind), data, { timeout })).data;
    } catch (err) {
      throw new ShardUnavailableError(
        `node ${node} did not take ${what} (${err instanceof Error ? err.message : String(err)}): it stopped, is paused or lost its NATS connection; retry`,
      );
    }
    const decoded = fromBinary(NodeDeliveryAnswerSchema, answer);
    if (decoded.errorName !== "") throw rebuildError(node, decoded);
    return decoded;
  }

  /** Subscribes `kind` for `node`, answering each request with what `answer` makes of its data. */
  const serve = (node: string, kind: Question, answer: (data: Uint8Array) => Promise<NodeDeliveryAnswer>) =>
    nc.subscribe(subject(node, kind), {
      callback: (err, msg) => {
        if (err !== null) return;
        void answer(msg.data).then((a) => msg.respond(toBinary(NodeDeliveryAnswerSchema, a)), options.onError);
      },
    });

  return {
    attach(node, endpoint) {
      if (!/^[A-Za-z0-9_-]+$/.test(node)) {
        throw new Error(
          `cluster.nodeId "${node}" cannot be part of a NATS subject; use letters, digits, "-" and "_" only (set cluster.nodeId in shoal.yaml)`,
        );
      }
      const subscriptions: Subscription[] = [
        serve(node, "receive", (data) =>
          answering(async () => {
            const frame = fromBinary(NodeDeliverySchema, data);
            const delivery = deliveries.get(frame.kind);
            if (frame.envelope === undefined || delivery === undefined) throw new Error("a NodeDelivery without envelope or kind");
            await endpoint.receive(frame.envelope, delivery);
            return {};
          }),
        ),
        serve(node, "held", (data) => answering(async () => ({ held: endpoint.heldCall(fromBinary(EnvelopeSchema, data)) ?? "" }))),
        serve(node, "waits", (data) =>
          answering(async () => ({ awaits: endpoint.waitsOf(fromBinary(NodeCycleQuestionSchema, data).instance) })),
        ),
        serve(node, "break", (data) =>
          answering(async () => {
            const { instance, callee, cycle } = fromBinary(NodeCycleQuestionSchema, data);
            return { cancelled: await endpoint.breakCycle(instance, callee, cycle) };
          }),
        ),
        serve(node, "cancel", (data) =>
          answering(async () => {
            const { call } = fromBinary(NodeCycleQuestionSchema, data);
            return { cancelled: call !== undefined && (await endpoint.withdrawCall(call)) };
          }),
        ),
        nc.subscribe(subject(node, "reply"), {
          callback: (err, msg) => {
            if (err !== null) return;
            try {
              const reply = fromBinary(NodeReplySchema, msg.data);
              const outcome: ReplyOutcome =
                reply.outcome.case === "reply" ? { reply: reply.outcome.value } : { unavailable: reply.outcome.value ?? "unknown reply" };
              endpoint.receiveReply(reply.request, outcome);
            } catch (error) {
              options.onError?.(error);
            }
          },
        }),
      ];
      return () => {
        for (const s of subscriptions) s.unsubscribe();
      };
    },
    async send(node, envelope, delivery) {
      await ask(
        node,
        "receive",
        about(envelope),
        toBinary(NodeDeliverySchema, create(NodeDeliverySchema, { envelope, kind: kinds[delivery] })),
      );
    },
    async heldCall(node, envelope) {
      const { held } = await ask(node, "held", about(envelope), toBinary(EnvelopeSchema, envelope));
      return held === "kept" || held === "inflight" ? held : undefined;
    },
    async waitsOf(node, instance) {
      const question = create(NodeCycleQuestionSchema, { instance });
      return (await ask(node, "waits", `the question what ${instance} awaits`, toBinary(NodeCycleQuestionSchema, question))).awaits;
    },
    async breakCycle(node, instance, callee, cycle) {
      const question = create(NodeCycleQuestionSchema, { instance, callee, cycle });
      return (await ask(node, "break", `the ${cycle}`, toBinary(NodeCycleQuestionSchema, question))).cancelled;
    },
    async withdrawCall(node, call) {
      const question = create(NodeCycleQuestionSchema, { call });
      return (await ask(node, "cancel", `the withdrawal of call ${call.callId}`, toBinary(NodeCycleQuestionSchema, question))).cancelled;
    },
    reply(node, request, outcome) {
      const message = create(NodeReplySchema, {
        request,
        outcome: "reply" in outcome ? { case: "reply", value: outcome.reply } : { case: "unavailable", value: outcome.unavailable },
      });
      try {
        nc.publish(subject(node, "reply"), toBinary(NodeReplySchema, message));
      } catch (error) {
        // A closed connection: the awaiting node hears of its owner's death instead.
        options.onError?.(error);
      }
    },
  };
}

/** The answer `answer` makes, or the error it threw by its class's name. */
async function answering(answer: () => Promise<{ held?: string; awaits?: string[]; cancelled?: boolean }>): Promise<NodeDeliveryAnswer> {
  try {
    return create(NodeDeliveryAnswerSchema, await answer());
  } catch (err) {
    const error = err instanceof Error ? err : new Error(String(err));
    return create(NodeDeliveryAnswerSchema, { errorName: error.name, errorMessage: error.message });
  }
}

/**
 * The sender's error for the owner's refusal: Unavailable stays retryable,
 * and so does a storage failure or a fence at the owner (the shard is moving
 * or recovering there); an envelope the owner cannot store is the message's
 * fault and stays so.
 */
function rebuildError(node: string, answer: NodeDeliveryAnswer): Error {
  const message = `${answer.errorMessage} (at node ${node})`;
  switch (answer.errorName) {
    case "ShardUnavailableError":
    case "StorageError":
    case "FencedError":
      return new ShardUnavailableError(message);
    case "RecordEncodingError":
      return new RecordEncodingError(message);
    default:
      return new Error(message);
  }
}
