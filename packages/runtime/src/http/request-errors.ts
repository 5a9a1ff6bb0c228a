// The ingress's words for a request body it cannot take, in one place: the
// ingress rewrites connect-es's errors into them, and Shoal's own unary
// handler (connect-unary.ts) answers with them directly.

/** The message of ResourceExhausted for a request body over the size limit; `size` when it is known. */
export function requestTooLarge(size: number | undefined, maxRequestBytes: number): string {
  const what = size !== undefined ? `the request of ${size} bytes` : "the request";
  return `${what} is larger than maxRequestBytes (${maxRequestBytes} bytes); send less, or raise ingress.maxRequestBytes in shoal.yaml (shoal dev --max-request-bytes)`;
}

/** The message of InvalidArgument for a body that does not decode: the decoder's own message, prefixed. */
export function malformedBody(decoderMessage: string): string {
  return `malformed request body: ${decoderMessage}`;
}
