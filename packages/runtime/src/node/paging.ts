/** Which instances a page holds: the keys after `after`, in key order, at most `limit`. */
export interface PageRequest {
  /** Only keys strictly greater than this; none: from the first key. */
  readonly after?: string;
  readonly limit: number;
}

/** One shard's page of a function type's instances. */
export interface InstancePage {
  /** In key order. */
  readonly instances: ReadonlyArray<{ readonly key: string; readonly state: Uint8Array }>;
  /** Set when the shard has keys after the last one here: pass it as `after` for its next page. */
  readonly next?: string;
}

/** A page of a function type's instance keys across the shards of a node. */
export interface KeyPage {
  /** In key order, at most the limit asked for. */
  readonly keys: string[];
  /** Whether keys follow the last one: ask again with `after` set to it. */
  readonly more: boolean;
}

/**
 * Merges the shards' pages for one request into the node's page: each shard
 * was asked for `limit` keys after the same `after`, so the first `limit`
 * keys of all of them, in key order, are the node's first `limit`. A node
 * with millions of instances answers from `shards × limit` keys, never from
 * all of them.
 */
export function mergeInstancePages(pages: Iterable<InstancePage>, limit: number): KeyPage {
  const keys: string[] = [];
  let more = false;
  for (const page of pages) {
    for (const { key } of page.instances) keys.push(key);
    if (page.next !== undefined) more = true;
  }
  keys.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  if (keys.length > limit) more = true;
  return { keys: keys.slice(0, limit), more };
}
