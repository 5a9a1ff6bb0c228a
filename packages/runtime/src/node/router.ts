import { create, fromBinary, type Message, toBinary } from "@bufbuild/protobuf";
import { type Envelope, EnvelopeSchema, type Reply } from "@shoal/sdk/internal";
import { type HeldCall, type ReplyAddress, type ShardProcessor, ShardUnavailableError } from "../shard/shard-processor.js";
import { controlHandlers } from "../shard/shard-state.js";
import type { ReplyChannel } from "./reply-channel.js";

/**
 * Which node owns each shard, as the nodes of a deployment see it. A node
 * sets itself as owner once it has a shard open, and routes a message for a
 * shard it does not have open to the owner this names. The cluster keeps it
 * in its store; `createMemoryDirectory` shares one between nodes of a process.
 */
export interface ShardDirectory {
  /** The node that owns the shard, or undefined when none is known. */
  ownerOf(shard: number): string | undefined;
  /** Records the shard's owner; `undefined` clears it (only if `node` is `expected`, when given). */
  setOwner(shard: number, node: string | undefined, expected?: string): void;
  /**
   * Calls `listener` when a shard's owner `node` is no longer its owner (its
   * lease moved or expired: the node gave the shard up or died), so requests
   * forwarded there stop waiting for a reply that may never come. Returns a
   * function that removes the listener. Optional: a directory whose owners
   * never vanish unannounced needs none.
   */
  onOwnerGone?(listener: (shard: number, node: string) => void): () => void;
}

/** A directory in memory, shared by the nodes of one process (tests, embedded clusters). */
export function createMemoryDirectory(): ShardDirectory {
  const owners = new Map<number, string>();
  return {
    ownerOf: (shard) => owners.get(shard),
    setOwner(shard, node, expected) {
      if (expected !== undefined && owners.get(shard) !== expected) return;
      if (node === undefined) owners.delete(shard);
      else owners.set(shard, node);
    },
  };
}

/** How a message is handed to a shard: does a sender await its reply, and is it a one-way send? */
export type Delivery = "request" | "accept" | "deliver";

/** A reply on its way to the node that awaits it, or the word that it is unknown. */
export type ReplyOutcome = { readonly reply: Reply } | { readonly unavailable: string };

/** What a node exposes to the transport: the receiving ends of routing and of its reply channel. */
export interface NodeEndpoint {
  /**
   * Hands a message to a shard open on this node. Resolves once accepted
   * (durably, for one-way sends); rejects with ShardUnavailableError when the
   * shard is not open here, so the sender retries (the owner may have moved).
   */
  receive(envelope: Envelope, delivery: Delivery): Promise<void>;
  /** Takes a reply for a request this node awaits. */
  receiveReply(request: string, outcome: ReplyOutcome): void;
  /**
   * What the shard of a call open on this node holds for it (a call cycle's
   * answer may be made up only if nothing); throws ShardUnavailableError
   * when the shard is not open here.
   */
  heldCall(envelope: Envelope): HeldCall;
  /** The locked instances that locked `instance`'s invocation, running on this node, awaits calls to. */
  waitsOf(instance: string): string[];
  /** Breaks a call cycle at the caller `instance`, whose shard is open here (`ShardProcessor.breakCycle`). */
  breakCycle(instance: string, callee: string, cycle: string): Promise<boolean>;
  /** Takes a call back from its callee's shard open here (`ShardProcessor.withdrawCall`). */
  withdrawCall(call: Envelope): Promise<boolean>;
}

/**
 * Carries messages and replies between the nodes of a deployment. The
 * in-process one (`createInProcessTransport`) connects nodes of one process;
 * the cluster adds one over NATS.
 */
export interface NodeTransport {
  /** Makes a node reachable under its id; returns a function that detaches it. */
  attach(node: string, endpoint: NodeEndpoint): () => void;
  /** Hands a message to a shard on `node`; as `NodeEndpoint.receive`. */
  send(node: string, envelope: Envelope, delivery: Delivery): Promise<void>;
  /** Hands a reply to the reply channel of `node`; dropped when that node is gone (its requests failed with it). */
  reply(node: string, request: string, outcome: ReplyOutcome): void;
  /**
   * Asks `node` what its shard holds for a call (`NodeEndpoint.heldCall`), so
   * a call cycle across nodes is answered at once. Optional: without it such
   * a cycle's call is answered Unavailable and retried.
   */
  heldCall?(node: string, envelope: Envelope): Promise<HeldCall>;
  /**
   * Asks `node` the questions of a search for a call cycle between chains on
   * different nodes (`NodeEndpoint.waitsOf`, `breakCycle`, `withdrawCall`).
   * Optional: without them such a cycle is not found.
   */
  waitsOf?(node: string, instance: string): Promise<string[]>;
  breakCycle?(node: string, instance: string, callee: string, cycle: string): Promise<boolean>;
  withdrawCall?(node: string, call: Envelope): Promise<boolean>;
}

/**
 * Connects nodes of one process. Messages cross it encoded, as they would a
 * network, so no node holds an object another node may change. Both
 * directions are synchronous up to the receiver, which keeps the order in
 * which a shard releases a call's outbox result and its reply.
 */
export function createInProcessTransport(): NodeTransport {
  const endpoints = new Map<string, NodeEndpoint>();
  return {
    attach(node, endpoint) {
      if (endpoints.has(node)) throw new Error(`a node with id ${node} is attached already; give each node its own nodeId`);
      endpoints.set(node, endpoint);
      return () => {
        if (endpoints.get(node) === endpoint) endpoints.delete(node);
      };
    },
    send(node, envelope, delivery) {
      const endpoint = endpoints.get(node);
      if (endpoint === undefined) return Promise.reject(new ShardUnavailableError(`node ${node} is not reachable; retry`));
      try {
        return endpoint.receive(fromBinary(EnvelopeSchema, toBinary(EnvelopeSchema, envelope)), delivery);
      } catch (err) {
        return Promise.reject(err);
      }
    },
    reply(node, request, outcome) {
      endpoints.get(node)?.receiveReply(request, outcome);
    },
    async heldCall(node, envelope) {
      const endpoint = endpoints.get(node);
      if (endpoint === undefined) throw new ShardUnavailableError(`node ${node} is not reachable; retry`);
      return endpoint.heldCall(envelope);
    },
    async waitsOf(node, instance) {
      return endpoints.get(node)?.waitsOf(instance) ?? [];
    },
    async breakCycle(node, instance, callee, cycle) {
      return (await endpoints.get(node)?.breakCycle(instance, callee, cycle)) ?? false;
    },
    async withdrawCall(node, call) {
      return (await endpoints.get(node)?.withdrawCall(fromBinary(EnvelopeSchema, toBinary(EnvelopeSchema, call)))) ?? false;
    },
  };
}

/**
 * A durable queue of one-way messages per shard that any node publishes to
 * and the shard's owner consumes: the cluster's inputs stream
 * (`createShardInputs`, `storage/nats/shard-inputs.ts`).
 */
export interface ShardInbox {
  /** Stores a one-way message for `shard`; resolves once it is durable there. */
  publish(shard: number, envelope: Envelope): Promise<void>;
  /** Hands the shard's messages to `submit` in order, each acknowledged once `submit` resolved, until stopped. */
  consume(shard: number, submit: (envelope: Envelope) => Promise<void>): { stop(): Promise<void> };
}

/** What a router needs from its node. */
export interface RouterOptions {
  readonly nodeId: string;
  /** The processor of a shard open on this node. */
  processorOf(shard: number): ShardProcessor | undefined;
  /** The shard a message goes to, when the envelope does not name one. */
  shardFor(envelope: Envelope): number;
  readonly directory?: ShardDirectory;
  readonly transport?: NodeTransport;
  /**
   * Where every one-way message ("accept", "deliver") goes when given,
   * whichever node owns its shard: the owner consumes it from there.
   */
  readonly inbox?: ShardInbox;
  /** Where replies addressed to this node arrive. */
  readonly replies: ReplyChannel;
  /** The locked instances that `instance`'s invocation on this node awaits calls to (the node's wait-for graph). */
  awaitsOf?(instance: string): string[];
  /** The request's bytes, for a request that travelled decoded and now leaves the process. */
  encodeRequest(envelope: Envelope, decoded: Message): Uint8Array;
  /** A reply message's bytes, for a reply that travelled decoded and now leaves the process. */
  encodeOutput(output: Message): Uint8Array;
}

/**
 * Takes messages to their shard and replies to their reply-to address,
 * without assuming this node owns the shard: a shard open here gets the
 * message from its processor; another node's shard through the transport.
 */
export interface Router {
  /**
   * Hands a message to its shard. A "request" resolves once the shard took it
   * (its reply comes through the reply channel); "accept" and "deliver" once
   * it is durable. Rejects with ShardUnavailableError when no node has the
   * shard open now: nothing was taken, retry.
   */
  route(envelope: Envelope, delivery: Delivery, decoded?: Message): Promise<void>;
  /** What the shard of a call holds for it, here or at its owner (`NodeEndpoint.heldCall`). */
  heldCall(envelope: Envelope): HeldCall | Promise<HeldCall>;
  /**
   * The locked instances `instance` (`type/key`) awaits calls to, asked of
   * the node its shard is open on: the hops of a search for a call cycle
   * between nodes.
   */
  waitsOf(instance: string): Promise<string[]>;
  /** Breaks a call cycle at the caller `instance`, on the node its shard is open on (`ShardProcessor.breakCycle`). */
  breakCycle(instance: string, callee: string, cycle: string): Promise<boolean>;
  /** Takes a call back from its callee's shard, here or at its owner (`ShardProcessor.withdrawCall`). */
  withdrawCall(call: Envelope): Promise<boolean>;
  /** Sends a reply, or a made-up Unavailable, to a reply-to address. */
  reply(address: ReplyAddress, outcome: Reply | ShardUnavailableError, output?: Message): void;
  /** This node's end of the transport. */
  readonly endpoint: NodeEndpoint;
  /** Hands a one-way message consumed from the inbox to a shard's processor on this node. */
  submitInput(processor: ShardProcessor, envelope: Envelope): Promise<void>;
}

/** Where the reply of a request goes: its `replyTo`, or this node under the message id. */
export function replyAddressOf(envelope: Envelope, nodeId: string): ReplyAddress {
  const replyTo = envelope.replyTo?.kind;
  if (replyTo?.case === "ingress") return { node: replyTo.value.node, request: replyTo.value.request };
  if (replyTo?.case === "call" && replyTo.value.node !== "") return { node: replyTo.value.node, request: envelope.id };
  return { node: nodeId, request: envelope.id };
}

export function createRouter(options: RouterOptions): Router {
  const { nodeId, directory, transport, replies } = options;

  function submitLocal(processor: ShardProcessor, envelope: Envelope, delivery: Delivery, decoded?: Message): Promise<void> {
    try {
      if (envelope.handler === controlHandlers.callResult) return processor.submitCallResult(envelope);
      if (delivery !== "request") return processor.submit(envelope);
      processor.submit(envelope, replyAddressOf(envelope, nodeId), decoded).catch(() => {
        // the reply address hears of storage failures
      });
      return Promise.resolve();
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** The answer to a request forwarded to a node that is no longer its shard's owner. */
  const ownerGone = (shard: number, owner: string) =>
    new ShardUnavailableError(
      `node ${owner}, which took the request for shard ${shard}, no longer owns the shard (it stopped, died or gave the shard up) before it replied; retry (with the same Idempotency-Key: a reply it committed is kept)`,
    );

  const notOpen = (shard: number) =>
    new ShardUnavailableError(`shard ${shard} is not open on this node (starting, recovering or moving to another node); retry`);

  /** To the shard open here, else (when `forward`) to its owner in the directory. */
  function routeTo(envelope: Envelope, delivery: Delivery, decoded: Message | undefined, forward: boolean): Promise<void> {
    try {
      const shard = envelope.shard ?? options.shardFor(envelope);
      if (options.inbox !== undefined && forward && delivery !== "request") {
        // One path per shard even for a shard open here: receivers drop an outbox entry
        // at or below the last sequence they took from its source, so two paths that
        // could overtake each other (around a takeover) would lose entries.
        if (decoded !== undefined && envelope.payload.length === 0) envelope.payload = options.encodeRequest(envelope, decoded);
        return options.inbox.publish(shard, envelope);
      }
      const processor = options.processorOf(shard);
      if (processor !== undefined) return submitLocal(processor, envelope, delivery, decoded);
      const owner = forward ? directory?.ownerOf(shard) : undefined;
      if (transport === undefined || owner === undefined || owner === nodeId) throw notOpen(shard);
      if (decoded !== undefined && envelope.payload.length === 0) envelope.payload = options.encodeRequest(envelope, decoded);
      const sent = transport.send(owner, envelope, delivery);
      const address = replyAddressOf(envelope, nodeId);
      if (delivery !== "request" || address.node !== nodeId) return sent;
      // The owner has it now; if the owner is gone before it replies, the reply never comes.
      return sent.then(() => {
        if (directory?.ownerOf(shard) === owner) replies.forwarded(address.request, owner, shard);
        else replies.deliver(address.request, ownerGone(shard, owner));
      });
    } catch (err) {
      return Promise.reject(err);
    }
  }

  directory?.onOwnerGone?.((shard, owner) => replies.failForwarded(owner, shard, ownerGone(shard, owner)));

  /** Here when the shard is open here; else at its owner, when `forward`. */
  function heldCall(envelope: Envelope, forward: boolean): HeldCall | Promise<HeldCall> {
    const shard = envelope.shard ?? options.shardFor(envelope);
    const processor = options.processorOf(shard);
    if (processor !== undefined) return processor.heldCall(envelope);
    const owner = forward ? directory?.ownerOf(shard) : undefined;
    if (transport?.heldCall === undefined || owner === undefined || owner === nodeId) throw notOpen(shard);
    return transport.heldCall(owner, envelope);
  }

  /** The shard of instance `type/key`. */
  const shardOfInstance = (instance: string) => {
    const slash = instance.indexOf("/");
    return options.shardFor(create(EnvelopeSchema, { target: { type: instance.slice(0, slash), key: instance.slice(slash + 1) } }));
  };

  /** Runs `here` on the shard's processor open on this node, else `there` at its owner; false when neither is there. */
  async function atShard<T>(
    shard: number,
    here: (processor: ShardProcessor) => Promise<T> | T,
    there: ((owner: string) => Promise<T>) | undefined,
    none: T,
  ): Promise<T> {
    const processor = options.processorOf(shard);
    if (processor !== undefined) return here(processor);
    const owner = directory?.ownerOf(shard);
    if (there === undefined || owner === undefined || owner === nodeId) return none;
    return there(owner);
  }

  const waitsOfAt = (instance: string) =>
    atShard(
      shardOfInstance(instance),
      () => options.awaitsOf?.(instance) ?? [],
      transport?.waitsOf && ((owner) => transport.waitsOf?.(owner, instance) ?? Promise.resolve([])),
      [] as string[],
    );
  const breakCycleAt = (instance: string, callee: string, cycle: string, forward: boolean) =>
    atShard(
      shardOfInstance(instance),
      (p) => p.breakCycle(instance, callee, cycle),
      forward && transport?.breakCycle
        ? (owner) => transport.breakCycle?.(owner, instance, callee, cycle) ?? Promise.resolve(false)
        : undefined,
      false,
    );
  const withdrawCallAt = (call: Envelope, forward: boolean) =>
    atShard(
      call.shard ?? options.shardFor(call),
      (p) => p.withdrawCall(call),
      forward && transport?.withdrawCall ? (owner) => transport.withdrawCall?.(owner, call) ?? Promise.resolve(false) : undefined,
      false,
    );

  return {
    route: (envelope, delivery, decoded) => routeTo(envelope, delivery, decoded, true),
    heldCall: (envelope) => heldCall(envelope, true),
    waitsOf: waitsOfAt,
    breakCycle: (instance, callee, cycle) => breakCycleAt(instance, callee, cycle, true),
    withdrawCall: (call) => withdrawCallAt(call, true),
    reply(address, outcome, output) {
      if (address.node === nodeId) {
        replies.deliver(address.request, outcome, output);
        return;
      }
      if (outcome instanceof Error) {
        transport?.reply(address.node, address.request, { unavailable: outcome.message });
        return;
      }
      let reply = outcome;
      // Only an in-process reply may carry its message decoded, without bytes.
      if (reply.result.case === "ok" && reply.result.value.length === 0 && output !== undefined)
        reply = { ...reply, result: { case: "ok", value: options.encodeOutput(output) } };
      transport?.reply(address.node, address.request, { reply });
    },
    submitInput: (processor, envelope) => submitLocal(processor, envelope, "deliver"),
    endpoint: {
      // Not forwarded again: a message bounces between nodes with stale
      // directories no longer than the sender's retry takes.
      receive: (envelope, delivery) => routeTo(envelope, delivery, undefined, false),
      receiveReply(request, outcome) {
        replies.deliver(request, "reply" in outcome ? outcome.reply : new ShardUnavailableError(outcome.unavailable));
      },
      heldCall: (envelope) => heldCall(envelope, false) as HeldCall,
      waitsOf: (instance) => options.awaitsOf?.(instance) ?? [],
      breakCycle: (instance, callee, cycle) => breakCycleAt(instance, callee, cycle, false),
      withdrawCall: (call) => withdrawCallAt(call, false),
    },
  };
}
