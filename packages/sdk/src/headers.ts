/**
 * The HTTP headers of Shoal's ingress protocol. Any Connect, gRPC or gRPC-web
 * client (curl included) can set them.
 */
export const headers = {
  /** `Idempotency-Key`: a retry with the same key gets the first reply. */
  idempotencyKey: "idempotency-key",
  /** `Shoal-Send: 1`: enqueue durably and answer at once, without the handler's reply. */
  send: "shoal-send",
  /** `Shoal-Delay-Ms: N`: with `Shoal-Send`, deliver after N milliseconds. */
  delayMs: "shoal-delay-ms",
  /**
   * `Shoal-Reject-Unknown-Fields: 1`: refuse a Connect JSON request with a
   * field its message lacks (InvalidArgument naming it), even where the
   * ingress is set to ignore them. `shoal call` sends it.
   */
  rejectUnknownFields: "shoal-reject-unknown-fields",
  /** Response header: the accepted message's id (its cancellation token). */
  messageId: "shoal-message-id",
} as const;
