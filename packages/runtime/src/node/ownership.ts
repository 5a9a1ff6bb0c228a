/**
 * Which shards a node owns. The node opens the shards it owns at start, and
 * acquires or releases one at run time (`NodeRuntime.acquireShard` and
 * `releaseShard`), which keeps this object up to date.
 */
export interface ShardOwnership {
  /** Whether this node owns the shard now. */
  owns(shard: number): boolean;
  /** The shards this node owns, in ascending order. */
  owned(): number[];
  /** Records that this node took the shard. */
  acquire(shard: number): void;
  /** Records that this node gave the shard up. */
  release(shard: number): void;
}

/**
 * An ownership of the given shards, changed only through `acquire` and
 * `release`. `allShards(n)` is the static one a single node uses.
 */
export function createShardOwnership(shards: Iterable<number>): ShardOwnership {
  const owned = new Set(shards);
  return {
    owns: (shard) => owned.has(shard),
    owned: () => [...owned].sort((a, b) => a - b),
    acquire: (shard) => void owned.add(shard),
    release: (shard) => void owned.delete(shard),
  };
}

/** A single node's ownership: every shard, 0 to `shards - 1`. */
export function allShards(shards: number): ShardOwnership {
  return createShardOwnership(Array.from({ length: shards }, (_, shard) => shard));
}
