/**
 * The shared inputs stream of cluster mode (DESIGN §9): any node publishes a
 * one-way message for shard `s` on subject `<prefix>.in.<s>` of the stream
 * `<prefix>-inputs`, and the shard's owner consumes that subject in order.
 *
 * Publishing. `Nats-Msg-Id` is the envelope id with its `acceptedAtMs`, so
 * JetStream stores a publish retried within the stream's duplicate window (2
 * minutes unless `duplicateWindowMs` says otherwise) once, while a call sent
 * again by its caller (a new `acceptedAtMs`: `ShardProcessor`'s resend) is a
 * new copy that reaches the callee. The acknowledgement is the durable
 * acceptance of a one-way send: the message survives its sender.
 *
 * A copy published after the window is stored again, and is harmless all the
 * same, because the shard drops an envelope it already has: an outbox
 * envelope by its source shard and sequence (the receiver's watermark), a
 * call's result by its source and the caller's journal, a message with an
 * idempotency key by its memo (kept `memoRetentionMs`, 24 h by default), and
 * a message still pending by its id. What is left, a one-way send from the
 * ingress without an idempotency key, has an id made for that request: only
 * the node that accepted it publishes it, within its own acknowledgement
 * timeout, far inside the window. A client retrying such a send makes a new
 * message; that is what the key is for.
 *
 * Consuming. One durable pull consumer per shard (`<prefix>-in-<shard>-<random>`,
 * explicit acks) on a work-queue stream: an acknowledged input is removed, so
 * what is left on the subject is exactly what no owner has made durable yet.
 * A consumer session starts by deleting every consumer of the shard's
 * subject and creating its own under a new name (delivering everything
 * left, in order; an older session, a stale owner's, can no longer fetch
 * from it), hands each message to `submit` in stream order with at most
 * `maxInFlight` unacknowledged, and acknowledges a message
 * once `submit` resolved (the input is in the shard's WAL). A new owner, or
 * the same one after a failure, starts a new session and so resumes where the
 * last one stopped, with the inputs it left unacknowledged first.
 *
 * An input redelivered after its owner made it durable but before the
 * acknowledgement arrived (a crash in between) reaches a shard that may
 * already have processed it. An envelope without a source gets one here,
 * `{shard: inputsStreamSource, sequence: <stream sequence>}`, and the shard
 * drops a source sequence at or below the last it took (its watermark, kept
 * in the shard's tables). That is sound because `submit` sees the subject's
 * messages in stream order and the shard appends them in that order: a
 * session stops submitting at its first refusal, and the next one starts
 * from the first unacknowledged message. An envelope that has a source (an
 * outbox entry, a call result) keeps it; its own watermark covers it.
 *
 * A message on the subject that is not an envelope, or that `submit` refuses
 * for good (`InvalidInputError`, `RecordEncodingError`), is reported with its
 * stream and sequence and acknowledged unprocessed: JetStream never delivers
 * it again, and the messages behind it go on.
 */
import { randomBytes } from "node:crypto";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  AckPolicy,
  type Consumer,
  type ConsumerMessages,
  DeliverPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  type JetStreamManager,
  type JsMsg,
  jetstream,
  jetstreamManager,
  RetentionPolicy,
  type StoredMsg,
} from "@nats-io/jetstream";
import { type KV, Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import type { Logger } from "@shoal/sdk";
import { type Envelope, EnvelopeSchema, OutboxSourceSchema } from "@shoal/sdk/internal";
import { defaults } from "../../config/defaults.js";
import { InvalidInputError, RecordEncodingError, StorageError } from "../storage.js";
import { retryPlacement, storageError } from "./shard-wal.js";

/**
 * The `OutboxSource.shard` an input consumed from the inputs stream carries
 * when it had no source: shard numbers stop at 65535, so it names no shard.
 */
export const inputsStreamSource = 0xffff_ffff;

/** Options of `createShardInputs`. */
export interface ShardInputsOptions {
  /** An open connection to the NATS servers; the inputs do not close it. */
  readonly connection: NatsConnection;
  /** Replicas of the inputs stream, when this creates it. Default: 3 when the server is part of a cluster, 1 on a single server. */
  readonly replicas?: number;
  /** Names the stream `<prefix>-inputs`, its subjects `<prefix>.in.<shard>` and the consumers `<prefix>-in-<shard>-<random>`. Default `shoal`. */
  readonly prefix?: string;
  /** How long a publish, and each JetStream request, waits for an answer, in ms. Default 5000. */
  readonly ackTimeoutMs?: number;
  /**
   * The stream's duplicate window, when this creates it, in ms: a publish of
   * an envelope id stored within it is stored once. Default 120 000 (2 minutes, JetStream's).
   */
  readonly duplicateWindowMs?: number;
  /** Inputs of one shard handed to `submit` and not yet acknowledged, at most. Default 256. */
  readonly maxInFlight?: number;
  /** Where bad messages and failed consumer sessions are reported. Default: process warnings on stderr. */
  readonly logger?: Pick<Logger, "warn" | "error">;
  /**
   * For tests only: the consumers filter a subject no input has, so they see
   * none of the inputs the stream holds, as on a nats-server 2.9 whose index
   * of subjects lost track of them; shows taking them by sequence instead
   * (see `takeBySequence`).
   * @internal
   */
  readonly blindConsumers?: boolean;
}

/** The shared inputs stream of one NATS deployment. */
export interface ShardInputs {
  /** The stream that holds every shard's inputs. */
  readonly streamName: string;
  /** The subject of a shard's inputs. */
  subject(shard: number): string;
  /**
   * Publishes a one-way message for `shard`, with the envelope id and its
   * `acceptedAtMs` as `Nats-Msg-Id`. Resolves once JetStream acknowledged it (a copy within the
   * duplicate window is acknowledged without being stored again). Rejects
   * with `StorageError` when the stream cannot be created or the publish
   * was not acknowledged: the message may or may not be stored then, and
   * publishing it again with the same id is safe.
   */
  publish(shard: number, envelope: Envelope): Promise<void>;
  /**
   * Consumes a shard's inputs in stream order: hands each to `submit` and
   * acknowledges it once `submit` resolved, which must mean the input is
   * durable in the shard. After `submit` rejects (anything but
   * `InvalidInputError` or `RecordEncodingError`) no later input is submitted
   * in that session; the next session, after a backoff, starts again with
   * the first input not acknowledged. `submit` must therefore talk to one
   * shard processor for the consumer's lifetime: run one consumer per open
   * processor and stop it when the processor goes.
   */
  consume(shard: number, submit: (envelope: Envelope) => Promise<void>): InputConsumer;
}

/** A running consumer of one shard's inputs. */
export interface InputConsumer {
  /** Stops submitting, waits for the inputs in flight and acknowledges those that were submitted. */
  stop(): Promise<void>;
}

/** Creates the shared inputs stream of the NATS deployment `options.connection` reaches. */
export function createShardInputs(options: ShardInputsOptions): ShardInputs {
  const nc = options.connection;
  const prefix = options.prefix ?? defaults.storage.prefix;
  const ackTimeoutMs = options.ackTimeoutMs ?? 5_000;
  const maxInFlight = options.maxInFlight ?? 256;
  if (!Number.isSafeInteger(maxInFlight) || maxInFlight < 1) throw new Error(`maxInFlight must be a positive integer, got ${maxInFlight}`);
  const logger = options.logger ?? {
    warn: (message: string, fields?: Record<string, unknown>) => process.emitWarning(`${message} ${JSON.stringify(fields ?? {})}`),
    error: (message: string, fields?: Record<string, unknown>) => process.emitWarning(`${message} ${JSON.stringify(fields ?? {})}`),
  };
  const streamName = `${prefix}-inputs`;
  const subject = (shard: number) => `${prefix}.in.${shard}`;
  const js = jetstream(nc, { timeout: ackTimeoutMs });
  let manager: Promise<JetStreamManager> | undefined;
  const jsm = () => {
    manager ??= jetstreamManager(nc, { timeout: ackTimeoutMs });
    return manager;
  };
  let stream: Promise<void> | undefined;
  let consumerNamesBucket: Promise<KV> | undefined;

  /**
   * The names of the consumers the nodes made on the inputs stream, by
   * shard, kept an hour: what `clearUnlistedConsumers` tries when the stream
   * refuses a consumer for one it no longer lists.
   */
  function consumerRecord(): Promise<KV> {
    consumerNamesBucket ??= retryPlacement(() =>
      new Kvm(jetstream(nc)).create(`${prefix}-inputs-consumers`, {
        history: 1,
        ttl: 3_600_000,
        replicas: options.replicas ?? (nc.info?.cluster === undefined ? 1 : 3),
      }),
    );
    consumerNamesBucket.catch(() => {
      consumerNamesBucket = undefined;
    });
    return consumerNamesBucket;
  }

  function ensureStream(): Promise<void> {
    stream ??= (async () => {
      const m = await jsm();
      try {
        await m.streams.info(streamName);
        return;
      } catch (err) {
        if (!(err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamNotFound)) {
          throw storageError(`cannot read stream ${streamName}`, err);
        }
      }
      try {
        // A concurrent creator may be first: adding the same config again succeeds.
        await retryPlacement(() =>
          m.streams.add({
            name: streamName,
            subjects: [`${prefix}.in.*`],
            // An acknowledged input is gone: what is left is what no owner has durably yet.
            retention: RetentionPolicy.Workqueue,
            num_replicas: options.replicas ?? (nc.info?.cluster === undefined ? 1 : 3),
            ...(options.duplicateWindowMs === undefined ? {} : { duplicate_window: options.duplicateWindowMs * 1_000_000 }),
          }),
        );
      } catch (err) {
        throw storageError(`cannot create stream ${streamName} for the shards' inputs`, err);
      }
    })();
    // A failed attempt is not remembered: the next publish or session tries again.
    stream.catch(() => {
      stream = undefined;
    });
    return stream;
  }

  return {
    streamName,
    subject,
    async publish(shard, envelope) {
      await ensureStream();
      try {
        await js.publish(subject(shard), toBinary(EnvelopeSchema, envelope), { msgID: inputMessageId(envelope), timeout: ackTimeoutMs });
      } catch (err) {
        throw storageError(
          `publishing message ${envelope.id} for shard ${shard} to stream ${streamName} failed (it may or may not be stored; publish it again)`,
          err,
        );
      }
    },
    consume(shard, submit) {
      return startConsumer({
        shard,
        submit,
        ensureStream,
        consumerRecord,
        nc,
        jsm,
        js,
        streamName,
        subject: subject(shard),
        durable: `${prefix}-in-${shard}`,
        maxInFlight,
        ackTimeoutMs,
        logger,
        blind: options.blindConsumers === true,
      });
    },
  };
}

interface ConsumerOptions {
  readonly shard: number;
  readonly submit: (envelope: Envelope) => Promise<void>;
  readonly ensureStream: () => Promise<void>;
  readonly consumerRecord: () => Promise<KV>;
  readonly nc: NatsConnection;
  readonly jsm: () => Promise<JetStreamManager>;
  readonly js: ReturnType<typeof jetstream>;
  readonly streamName: string;
  readonly subject: string;
  readonly durable: string;
  readonly maxInFlight: number;
  readonly ackTimeoutMs: number;
  readonly logger: Pick<Logger, "warn" | "error">;
  readonly blind: boolean;
}

function startConsumer(o: ConsumerOptions): InputConsumer {
  let stopping = false;
  let messages: ConsumerMessages | undefined;
  let wake: (() => void) | undefined;
  const sleep = (ms: number) =>
    new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms);
      wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });

  /**
   * The consumer of the last session and what it delivered, kept for the next
   * session while the consumer exists and nothing was lost: a session that
   * ends for a timeout or missed heartbeats (frequent while a nats-server
   * restarts) goes on with it instead of making another, which on a loaded
   * 2.9 cluster failed again and again while the shard took nothing.
   */
  let current: { readonly name: string; readonly order: ReturnType<typeof createDeliveryOrder> } | undefined;
  /** Sessions in a row that ended with an error before their consumer delivered anything. */
  let barren = 0;
  /** Consumers in a row that saw fewer inputs than the stream holds for the shard. */
  let staleConsumers = 0;

  /** The consumer to read through: the last session's if it is still there, else a new one. */
  async function consumerFor(m: JetStreamManager): Promise<{ name: string; order: ReturnType<typeof createDeliveryOrder> }> {
    // JetStream's own list of the stream's consumers (its assignments, which need no answer from each consumer's leader).
    const listed = await consumerNames(o.nc, o.streamName, o.ackTimeoutMs);
    // The last one is kept only while that list has it. Not by its info, which the consumer's leader
    // answers: a nats-server 2.9 can keep answering for a consumer it no longer assigns, and every
    // session on it then missed its heartbeats (seen in the cluster storm: a shard's inputs unread
    // for the last 40 s, no consumer of its subject listed).
    if (current !== undefined && listed.includes(current.name)) return current;
    // A new one: the old one's unacknowledged deliveries would come back only after its ack wait, behind newer inputs.
    // And under a name of its own: an older session still fetching (a stale owner, another node) would otherwise pull
    // from this one's consumer by name, and an input it took and never acknowledged would come back here after its ack
    // wait, behind later inputs this shard took, at or below the watermark, and be dropped.
    // By name, from that list.
    current = undefined;
    for (const name of listed) {
      if (name !== o.durable && !name.startsWith(`${o.durable}-`)) continue;
      await m.consumers.delete(o.streamName, name).catch((err: unknown) => {
        if (!(err instanceof JetStreamApiError && err.code === JetStreamApiCodes.ConsumerNotFound)) throw err;
      });
    }
    const name = `${o.durable}-${randomBytes(6).toString("hex")}`;
    await recordName(name);
    await addConsumer(m, name);
    await leadFromCurrentReplica(m, name);
    current = { name, order: createDeliveryOrder() };
    return current;
  }

  async function session(): Promise<void> {
    await o.ensureStream();
    const m = await o.jsm();
    const { name: durable, order } = await consumerFor(m);
    const consumer: Consumer = await o.js.consumers.get(o.streamName, durable);
    const inFlight = new Set<Promise<void>>();
    let idleFetches = 0;
    let stale = 0;
    let refused: unknown;
    try {
      while (!stopping && refused === undefined) {
        messages = await consumer.fetch({ max_messages: o.maxInFlight - inFlight.size, expires: 2_000 });
        let fetched = 0;
        for await (const message of messages) {
          if (stopping || refused !== undefined) break;
          fetched++;
          barren = 0;
          staleConsumers = 0;
          if (message.subject !== o.subject) {
            // Not ours, so not acknowledged here (that would remove it from its shard's queue): a consumer that
            // delivers another subject's messages (seen on 2.9 after a restart) is replaced.
            refused = new InputsStaleError(o.shard, o.streamName, durable, `a message of ${message.subject}, not ${o.subject}`);
            messages.stop();
            break;
          }
          const gap = order.next(message.info.deliverySequence, message.seq, message.info.redelivered);
          if (gap !== undefined) {
            refused = new InputsGapError(o.shard, o.streamName, gap);
            messages.stop();
            break;
          }
          // Acknowledged, not terminated: a 2.9 work-queue stream keeps a terminated message.
          const envelope = decode(message, () => message.ack());
          if (envelope === undefined) continue;
          let submitted: Promise<void>;
          try {
            submitted = o.submit(envelope);
          } catch (err) {
            submitted = Promise.reject(err);
          }
          const settled = submitted.then(
            () => message.ack(),
            (err: unknown) => {
              if (err instanceof InvalidInputError || err instanceof RecordEncodingError) {
                drop(message, () => message.ack(), err.message);
                return;
              }
              refused ??= err;
              messages?.stop();
            },
          );
          inFlight.add(settled);
          void settled.finally(() => inFlight.delete(settled));
          if (inFlight.size >= o.maxInFlight) await Promise.race(inFlight);
        }
        // The fetch's batch was cut short by inputs in flight: wait for room before the next.
        if (inFlight.size >= o.maxInFlight) await Promise.race(inFlight);
        // Nothing came: a delivery lost last (none behind it shows the gap) would come back only after the ack wait.
        if (fetched === 0 && !stopping && refused === undefined) {
          // The stream's count first: an input published between the two answers then shows in the consumer's.
          const held = idleFetches++ % staleCheckEvery === 0 && inFlight.size === 0 ? await heldOnSubject(m) : undefined;
          const info = await consumer.info(false);
          const gap = order.lostAfterLast(info.delivered.consumer_seq);
          if (gap !== undefined) refused = new InputsGapError(o.shard, o.streamName, gap);
          else if (held !== undefined) {
            stale = held > info.num_pending + info.num_ack_pending ? stale + 1 : 0;
            // Twice in a row, so that an input acknowledged between the two answers is no reason.
            if (stale >= 2) {
              const what = `${info.num_pending} of the ${held} inputs the stream holds for the shard`;
              if (++staleConsumers >= takeBySequenceAfter) {
                // New consumers did not help either: take the inputs from the stream by their sequence.
                const taken = await takeBySequence(m, durable);
                refused = new InputsStaleError(o.shard, o.streamName, durable, `${what}; took ${taken} of them by their sequence`);
                if (taken > 0) staleConsumers = 0;
              } else {
                refused = new InputsStaleError(
                  o.shard,
                  o.streamName,
                  durable,
                  `${what} (its server ${info.cluster?.leader ?? "?"} may have a copy of the stream that is behind)`,
                );
              }
            }
          }
        }
      }
    } catch (err) {
      // A consumer that fails its sessions without delivering anything (its pulls lost on its leader, seen on 2.9
      // after a restart: inputs pending, no pull waiting) is not kept for a third.
      if (++barren >= 2) current = undefined;
      // Fresh consumers kept failing too (seen in the cluster storm: pulls unanswered for the last 35 s on a healthy
      // stream): the stream's leader still answers reads by sequence.
      if (barren >= takeBySequenceAfterBarren && !stopping) {
        if ((await takeBySequence(m, durable).catch(() => 0)) > 0) barren = 0;
      }
      throw err;
    } finally {
      await Promise.all(inFlight);
      // Refused, a gap, or a consumer behind: the next session starts over through a new consumer, which delivers
      // what was not acknowledged first and in order (this one would go on after it, and the watermark drop it later).
      if (refused !== undefined) current = undefined;
    }
    if (refused instanceof InputsGapError || refused instanceof InputsStaleError) {
      o.logger.warn(refused.message, { stream: o.streamName });
      // At once: nothing is wrong with the stream or the shard.
      return;
    }
    if (refused !== undefined) throw refused;
  }

  /** The messages the stream (its leader) holds on the shard's subject: what no owner has acknowledged. */
  async function heldOnSubject(m: JetStreamManager): Promise<number> {
    const info = await m.streams.info(o.streamName, { subjects_filter: o.subject });
    return info.state.subjects?.[o.subject] ?? 0;
  }

  /**
   * Adds this session's consumer, on disk with the stream's replicas. (In
   * memory, on 2.9, a consumer delivered messages of other shards' subjects
   * after a restart; with one replica its acknowledgements did not remove the
   * inputs from an R3 work queue.)
   */
  async function addConsumer(m: JetStreamManager, durable: string): Promise<void> {
    const config = {
      durable_name: durable,
      filter_subject: o.blind ? `${o.subject}-blind` : o.subject,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      max_ack_pending: o.maxInFlight,
    };
    await m.consumers.add(o.streamName, config).catch((err: unknown) => {
      throw notUnique(err);
    });
  }

  /**
   * A consumer reads the stream's copy on the server that leads it. When that
   * copy is behind (nats-server 2.9 can leave a restarted replica behind for
   * minutes), the consumer does not see the latest inputs: its leadership is
   * moved, a few times at most, until a replica that is current leads it.
   */
  async function leadFromCurrentReplica(m: JetStreamManager, name: string): Promise<void> {
    for (let attempt = 0; attempt < 3; attempt++) {
      const stream = await m.streams.info(o.streamName);
      const behind = new Set((stream.cluster?.replicas ?? []).filter((r) => !r.current || r.offline).map((r) => r.name));
      const leader = (await m.consumers.info(o.streamName, name)).cluster?.leader;
      if (leader === undefined || !behind.has(leader)) return;
      o.logger.warn(
        `shard ${o.shard}: consumer ${name} is led by ${leader}, whose copy of stream ${o.streamName} is behind; moving its lead`,
        {
          stream: o.streamName,
        },
      );
      await o.nc.request(`$JS.API.CONSUMER.LEADER.STEPDOWN.${o.streamName}.${name}`, "", { timeout: o.ackTimeoutMs });
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
  }

  /**
   * Keeps the name of a consumer about to be made, for `clearUnlistedConsumers`.
   * No consumer is made without it: one whose name went unrecorded can come
   * back as a consumer a nats-server kept, which no sweep then finds (seen in
   * the cluster storm: a shard's consumers refused for minutes, its inputs
   * never read, after "recording the name … failed" while JetStream was
   * electing the bucket's leader). The session fails and is retried instead.
   */
  async function recordName(name: string): Promise<void> {
    try {
      await (await o.consumerRecord()).put(`${o.shard}.${name}`, "");
    } catch (err) {
      throw storageError(`shard ${o.shard}: recording the name of consumer ${name} failed, so it is not made yet`, err);
    }
  }

  /**
   * The stream refused this shard's consumer for another that takes its
   * subject, several times in a row, although every consumer of this shard
   * was deleted first and JetStream lists none for that subject. A
   * nats-server 2.9 that was down when a consumer was deleted can bring it
   * back from its disk when it restarts, unknown to JetStream's assignments,
   * and then refuses every new consumer of that subject (seen in the cluster
   * storm: for minutes, whoever led the stream). Deleting it by name finds
   * nothing, but making a consumer of the same name adopts it on that server
   * (a durable that exists is updated, before the work-queue check), and
   * deleting that one then deletes it everywhere. Its name is one of those
   * the nodes recorded when they made this shard's consumers.
   */
  async function clearUnlistedConsumers(): Promise<"listed" | "cleared" | "none"> {
    const m = await o.jsm();
    for await (const consumer of m.consumers.list(o.streamName)) {
      // A consumer that is there (one not made by Shoal) is no ghost: the refusal says so already.
      if (consumer.config.filter_subject === o.subject) return "listed";
    }
    const listed = new Set(await consumerNames(o.nc, o.streamName, o.ackTimeoutMs));
    const record = await o.consumerRecord();
    const recorded: string[] = [];
    for await (const key of await record.keys(`${o.shard}.*`)) recorded.push(key.slice(String(o.shard).length + 1));
    const candidates = recorded.filter((name) => !listed.has(name)).slice(-64);
    o.logger.warn(
      `shard ${o.shard}: stream ${o.streamName} keeps refusing a consumer of ${o.subject} for one it no longer lists; making and deleting each of the ${candidates.length} consumers this shard had, to clear it`,
      { stream: o.streamName },
    );
    for (const name of candidates) {
      try {
        await addConsumer(m, name);
      } catch {
        // Not that one: a server still refuses it for the other.
        continue;
      }
      await m.consumers.delete(o.streamName, name).catch(() => {});
      await record.delete(`${o.shard}.${name}`).catch(() => {});
      o.logger.warn(`shard ${o.shard}: made and deleted consumer ${name} of stream ${o.streamName}, which a nats-server had kept`, {
        stream: o.streamName,
      });
      // Made on every server of the stream, so that one is gone everywhere. Another server may keep another: the
      // next session says, at once (the storms saw several for one shard). Not by going on down the list here: once
      // the last is gone every name is accepted, and each would be made and deleted for nothing.
      return "cleared";
    }
    return "none";
  }

  function isNotUnique(err: unknown): boolean {
    return err instanceof StorageError && err.cause instanceof JetStreamApiError && err.cause.code === workQueueConsumerNotUnique;
  }

  function notUnique(err: unknown): unknown {
    if (!(err instanceof JetStreamApiError && err.code === workQueueConsumerNotUnique)) return err;
    return new StorageError(
      `shard ${o.shard}: stream ${o.streamName} is a work queue and another consumer takes subject ${o.subject} (a deletion still under way, or one not made by Shoal: only consumers named ${o.durable}-* are deleted here)`,
      { cause: err },
    );
  }

  /** The envelope of an input, delivered (`JsMsg`) or read by its sequence (`StoredMsg`); undefined when it is dropped. */
  function decode(message: JsMsg | StoredMsg, remove: () => void): Envelope | undefined {
    let envelope: Envelope;
    try {
      envelope = fromBinary(EnvelopeSchema, message.data);
    } catch (err) {
      drop(
        message,
        remove,
        `it is not a Shoal envelope (${message.data.length} bytes: ${err instanceof Error ? err.message : String(err)})`,
      );
      return undefined;
    }
    if (envelope.id === "" || envelope.target === undefined) {
      drop(message, remove, `envelope ${JSON.stringify(envelope.id)} has ${envelope.id === "" ? "no id" : "no target"}`);
      return undefined;
    }
    envelope.source ??= create(OutboxSourceSchema, { shard: inputsStreamSource, sequence: BigInt(message.seq) });
    return envelope;
  }

  function drop(message: JsMsg | StoredMsg, remove: () => void, why: string) {
    o.logger.error(
      `shard ${o.shard}: message ${message.seq} of stream ${o.streamName} (subject ${message.subject}) is dropped: ${why}; only Shoal nodes may publish to ${o.subject}`,
      { stream: o.streamName, sequence: message.seq },
    );
    remove();
  }

  /**
   * Hands the shard the inputs the stream holds on its subject, read one by
   * one by their sequence, in order, and removes each once `submit` resolved.
   * For a consumer that does not see inputs the stream holds: a nats-server
   * 2.9 can lose track of them in its index of subjects after a restart (seen
   * in the cluster storm: every new consumer, on whichever server, started
   * after the last input, and a shard took nothing for the last 40 s), and a
   * consumer finds the messages of its subject through that index, while a
   * read by sequence does not use it. And for a subject no consumer can be
   * made for, while a nats-server keeps one under a name no node recorded
   * (see `clearUnlistedConsumers`). The session's consumer `durable`, if
   * any, is deleted first, so no consumer of the shard delivers meanwhile
   * (only the shard's owner makes them). The read stops at the first sequence it cannot
   * read or whose input `submit` refuses, so the inputs taken are all those of
   * the subject before it: one that came after them in the stream could
   * otherwise reach the shard later, below its watermark, and be dropped.
   * Returns how many it took, malformed ones removed included.
   */
  async function takeBySequence(m: JetStreamManager, durable?: string): Promise<number> {
    if (durable !== undefined) await m.consumers.delete(o.streamName, durable).catch(() => undefined);
    const held = await heldOnSubject(m);
    if (held === 0) return 0;
    const { first_seq: first, last_seq: last } = (await m.streams.info(o.streamName)).state;
    const taken: number[] = [];
    const remove = (seq: number) => () => void taken.push(seq);
    /** Messages of the subject read, and why the read stopped before `last` (for the log when it took none). */
    let found = 0;
    let stoppedAt: string | undefined;
    for (let seq = first; seq <= last && taken.length < o.maxInFlight && !stopping; seq++) {
      let message: StoredMsg | null;
      try {
        message = await m.streams.getMessage(o.streamName, { seq });
      } catch (err) {
        stoppedAt = `reading message ${seq} failed: ${err instanceof Error ? err.message : String(err)}`;
        break;
      }
      if (message === null || message.subject !== o.subject) continue;
      found++;
      const envelope = decode(message, remove(seq));
      if (envelope === undefined) continue;
      try {
        await o.submit(envelope);
      } catch (err) {
        if (!(err instanceof InvalidInputError || err instanceof RecordEncodingError)) {
          stoppedAt = `the shard refused message ${seq}: ${err instanceof Error ? err.message : String(err)}`;
          break;
        }
        drop(message, remove(seq), err.message);
        continue;
      }
      remove(seq)();
    }
    // Once durable in the shard: a removal that fails leaves a copy the shard drops by its watermark.
    for (const seq of taken) await m.streams.deleteMessage(o.streamName, seq, false).catch(() => false);
    if (taken.length > 0) {
      o.logger.warn(`shard ${o.shard}: took ${taken.length} inputs of ${o.subject} from stream ${o.streamName} by their sequence`, {
        stream: o.streamName,
      });
    } else {
      o.logger.warn(
        `shard ${o.shard}: stream ${o.streamName} counts ${held} inputs of ${o.subject}, but none was taken by its sequence: ${stoppedAt ?? `messages ${first} to ${last} hold ${found} of that subject`}`,
        { stream: o.streamName },
      );
    }
    return taken.length;
  }

  const running = (async () => {
    let refusedInARow = 0;
    let clearedInARow = 0;
    for (let failures = 0; !stopping; ) {
      try {
        await session();
        failures = 0;
        refusedInARow = 0;
        clearedInARow = 0;
      } catch (err) {
        if (stopping) return;
        failures++;
        refusedInARow = isNotUnique(err) ? refusedInARow + 1 : 0;
        if (refusedInARow === 0) clearedInARow = 0;
        if (refusedInARow >= sweepAfterRefusals) {
          const swept = await clearUnlistedConsumers().catch((sweep: unknown) => {
            o.logger.warn(`shard ${o.shard}: clearing consumers of ${o.subject} that stream ${o.streamName} no longer lists failed`, {
              error: String(sweep),
            });
            return "failed" as const;
          });
          // The refusal was a kept consumer, so the next one is too: swept at its first refusal, not after three
          // more 5 s apart (several kept for one shard left its inputs unread for a minute in the storm). A second
          // apart and a few times at most: a deletion under way refuses a new consumer for a moment too.
          if (swept === "cleared" && ++clearedInARow <= maxClearedInARow) {
            refusedInARow = sweepAfterRefusals - 1;
            failures = 0;
            await sleep(1_000);
            continue;
          }
          refusedInARow = 0;
          if (swept === "none") {
            // Kept under a name no node recorded: no consumer of the subject can be made until an operator deletes it
            // on that server. Meanwhile the inputs are read by their sequence, which needs no consumer.
            await o
              .jsm()
              .then((m) => takeBySequence(m))
              .catch((take: unknown) =>
                o.logger.warn(`shard ${o.shard}: taking the inputs of ${o.subject} by their sequence failed`, { error: String(take) }),
              );
          }
        }
        // The shard refusing (recovering, moved) is expected for a moment; say so once it lasts.
        if (failures >= 3 || !(err instanceof StorageError || isUnavailable(err)))
          o.logger.warn(`shard ${o.shard}: consuming inputs from stream ${o.streamName} failed; retrying`, {
            error: err instanceof Error ? err.message : String(err),
            attempt: failures,
          });
        await sleep(Math.min(5_000, 100 * 2 ** failures));
      }
    }
  })();

  return {
    async stop() {
      stopping = true;
      messages?.stop();
      wake?.();
      await running;
    },
  };
}

/**
 * A session saw a delivery of its consumer go missing. It submits nothing
 * after the gap; the next session starts from the first input not
 * acknowledged, which includes the lost one, in stream order.
 */
class InputsGapError extends Error {
  override name = "InputsGapError";
  constructor(shard: number, stream: string, gap: string) {
    super(
      `shard ${shard}: ${gap} of stream ${stream} never arrived (lost in transit, as around a nats-server restart); consuming again from the first input not acknowledged`,
    );
  }
}

/**
 * The session's consumer does not see inputs that the stream holds on its
 * subject: the server it lives on has a copy of the stream that is behind, as
 * nats-server 2.9 leaves a replica after a restart (seen for minutes in the
 * cluster storms). The next session makes a new consumer.
 */
class InputsStaleError extends Error {
  override name = "InputsStaleError";
  constructor(shard: number, stream: string, consumer: string, what: string) {
    super(`shard ${shard}: consumer ${consumer} of stream ${stream} delivered ${what}; consuming again through a new consumer`);
  }
}

/**
 * Checks that a consumer session sees every delivery of its consumer, in
 * stream order. The shard drops an input at or below the last stream
 * sequence it took (its watermark), so a session that took input n+1 while
 * input n was lost on its way (the server delivered it to a connection that
 * broke) would see input n dropped when the server delivers it again after
 * the ack wait: a lost message. A consumer numbers its deliveries 1, 2, 3…
 * (redeliveries included), so a lost one shows as a jump, either at the
 * next delivery or, when none follows, in the consumer's count of deliveries.
 * Returns a description of the gap, or undefined when there is none.
 */
export function createDeliveryOrder(): {
  next(deliverySequence: number, streamSequence: number, redelivered: boolean): string | undefined;
  lostAfterLast(deliveredCount: number): string | undefined;
} {
  let lastDelivery = 0;
  let lastStream = 0;
  return {
    next(deliverySequence, streamSequence, redelivered) {
      if (deliverySequence !== lastDelivery + 1) {
        return `delivery ${lastDelivery + 1}${deliverySequence > lastDelivery + 2 ? ` to ${deliverySequence - 1}` : ""} of its consumer (the next that arrived was ${deliverySequence})`;
      }
      lastDelivery = deliverySequence;
      // A redelivery comes back behind later inputs: an input submitted before whose acknowledgement was lost or late.
      if (!redelivered && streamSequence <= lastStream) {
        return `an input before message ${streamSequence} (it arrived after message ${lastStream})`;
      }
      if (streamSequence > lastStream) lastStream = streamSequence;
      return undefined;
    },
    lostAfterLast(deliveredCount) {
      return deliveredCount > lastDelivery
        ? `delivery ${lastDelivery + 1}${deliveredCount > lastDelivery + 1 ? ` to ${deliveredCount}` : ""} of its consumer (counted by the server, never received)`
        : undefined;
    },
  };
}

/**
 * Every how many empty fetches (2 s each) a session compares what the stream
 * holds on its subject with what its consumer sees: each one, so a consumer
 * behind is replaced within about 4 s (every third one took 12 s and more,
 * past the storms' settle time).
 */
const staleCheckEvery = 1;

/** New consumers in a row that see fewer inputs than the stream holds, after which the shard takes them by sequence. */
const takeBySequenceAfter = 2;

/** Sessions in a row that failed before their consumer delivered anything, after which the shard takes its inputs by sequence. */
const takeBySequenceAfterBarren = 4;

/** The `Nats-Msg-Id` of an input: one per envelope and time it was sent (`acceptedAtMs`). */
function inputMessageId(envelope: Envelope): string {
  return `${envelope.id}@${envelope.acceptedAtMs}`;
}

/** JetStream's error code for a second consumer of a subject on a work-queue stream. */
export const workQueueConsumerNotUnique = 10100;

/** Refusals in a row for another consumer of the subject after which the consumers it may be are cleared (see `clearUnlistedConsumers`). */
const sweepAfterRefusals = 3;

/** Sweeps in a row that each cleared a kept consumer, after which the next waits for three refusals again. */
const maxClearedInARow = 8;

/**
 * The names of a stream's consumers, from JetStream's assignments
 * (`$JS.API.CONSUMER.NAMES`), page by page: unlike the consumer listing,
 * it needs no answer from each consumer's leader.
 */
async function consumerNames(nc: NatsConnection, stream: string, timeoutMs: number): Promise<string[]> {
  const names: string[] = [];
  for (;;) {
    const answer = await nc.request(`$JS.API.CONSUMER.NAMES.${stream}`, JSON.stringify({ offset: names.length }), { timeout: timeoutMs });
    const page = answer.json<{
      consumers?: string[] | null;
      total?: number;
      error?: { code: number; err_code?: number; description?: string };
    }>();
    if (page.error !== undefined) {
      throw new StorageError(`cannot list the consumers of stream ${stream}: ${page.error.description ?? `error ${page.error.code}`}`);
    }
    const consumers = page.consumers ?? [];
    names.push(...consumers);
    if (consumers.length === 0 || names.length >= (page.total ?? 0)) return names;
  }
}

function isUnavailable(err: unknown): boolean {
  return err instanceof Error && err.name === "ShardUnavailableError";
}
