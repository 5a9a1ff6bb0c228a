/**
 * The shard of an address: FNV-1a (32 bit) of `type \0 key`, modulo the shard
 * count. Fixed per deployment: changing it moves every instance.
 */
export function shardOf(type: string, key: string, shards: number): number {
  let hash = 0x811c9dc5;
  const text = `${type}\u0000${key}`;
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  return hash % shards;
}
