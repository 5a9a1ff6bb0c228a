import { fromBinary, type Message, toBinary } from "@bufbuild/protobuf";
import { type Envelope, EnvelopeSchema, type Reply } from "@shoal/sdk/internal";
import { type ReplyAddress, type ShardProcessor, ShardUnavailableError } from "../shard/shard-processor.js";
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
  };
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
  /** Where replies addressed to this node arrive. */
  readonly replies: ReplyChannel;
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
  /** Sends a reply, or a made-up Unavailable, to a reply-to address. */
  reply(address: ReplyAddress, outcome: Reply | ShardUnavailableError, output?: Message): void;
  /** This node's end of the transport. */
  readonly endpoint: NodeEndpoint;
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

  const notOpen = (shard: number) =>
    new ShardUnavailableError(`shard ${shard} is not open on this node (starting, recovering or moving to another node); retry`);

  /** To the shard open here, else (when `forward`) to its owner in the directory. */
  function routeTo(envelope: Envelope, delivery: Delivery, decoded: Message | undefined, forward: boolean): Promise<void> {
    try {
      const shard = envelope.shard ?? options.shardFor(envelope);
      const processor = options.processorOf(shard);
      if (processor !== undefined) return submitLocal(processor, envelope, delivery, decoded);
      const owner = forward ? directory?.ownerOf(shard) : undefined;
      if (transport === undefined || owner === undefined || owner === nodeId) throw notOpen(shard);
      if (decoded !== undefined && envelope.payload.length === 0) envelope.payload = options.encodeRequest(envelope, decoded);
      return transport.send(owner, envelope, delivery);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  return {
    route: (envelope, delivery, decoded) => routeTo(envelope, delivery, decoded, true),
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
    endpoint: {
      // Not forwarded again: a message bounces between nodes with stale
      // directories no longer than the sender's retry takes.
      receive: (envelope, delivery) => routeTo(envelope, delivery, undefined, false),
      receiveReply(request, outcome) {
        replies.deliver(request, "reply" in outcome ? outcome.reply : new ShardUnavailableError(outcome.unavailable));
      },
    },
  };
}
