import type { Address } from "./function-type.js";

/** The parts of a cancellation token: the delayed message and where it waits. */
export interface TokenParts {
  readonly target: Address;
  readonly messageId: string;
}

// Tokens live in users' state, so they are printable and stable: three
// URI-encoded parts joined by "|" (which encodeURIComponent always escapes).
export function formatToken(parts: TokenParts): string {
  return [parts.target.type, parts.target.key, parts.messageId].map(encodeURIComponent).join("|");
}

export function parseToken(token: string): TokenParts | undefined {
  const parts = token.split("|");
  if (parts.length !== 3) return undefined;
  const [type, key, messageId] = parts.map(decodeURIComponent) as [string, string, string];
  if (type === "" || messageId === "") return undefined;
  return { target: { type, key }, messageId };
}
