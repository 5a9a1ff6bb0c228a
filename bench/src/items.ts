import type { ItemHandlers, SpreaderHandlers } from "./gen/bench/v1/instances_shoal.js";
import { ItemFunction } from "./gen/bench/v1/instances_shoal.js";

let initialized = 0;

/**
 * Item.Init runs in this process so far (retries and redeliveries included):
 * the instances bench paces its fan-out by it, so the runtime's queues never
 * hold more than a window of pending creations.
 */
export function initializedCount(): number {
  return initialized;
}

/** A stateless fan-out: one request becomes `count` one-way Item.Init sends. */
export const spreader: SpreaderHandlers = {
  spread(req, ctx) {
    const item = ctx.send(ItemFunction);
    for (let i = 0; i < req.count; i++) item.init({ key: `${req.prefix}${req.from + i}`, stateBytes: req.stateBytes });
    return { sent: req.count };
  },
};

/** Bytes that do not compress, the same for a key every time. */
function payloadOf(key: string, size: number): Uint8Array {
  const bytes = new Uint8Array(size);
  let x = 2166136261;
  for (let i = 0; i < key.length; i++) x = Math.imul(x ^ key.charCodeAt(i), 16777619);
  for (let i = 0; i < size; i++) {
    // xorshift32
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    bytes[i] = x & 0xff;
  }
  return bytes;
}

/** An instance with about `stateBytes` of state: created once, touched now and then. */
export const items: ItemHandlers = {
  init(req, ctx) {
    initialized++;
    if (ctx.state.payload.length === 0) ctx.state.payload = payloadOf(ctx.key, req.stateBytes);
    return { payloadBytes: ctx.state.payload.length, touches: ctx.state.touches };
  },
  touch(_req, ctx) {
    ctx.state.touches += 1n;
    return { payloadBytes: ctx.state.payload.length, touches: ctx.state.touches };
  },
  get(_req, ctx) {
    return { payloadBytes: ctx.state.payload.length, touches: ctx.state.touches };
  },
};
