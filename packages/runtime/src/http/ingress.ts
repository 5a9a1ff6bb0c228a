import { create, type DescMethodUnary, type DescService, fromBinary, type Message, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter, type HandlerContext } from "@connectrpc/connect";
import { headers, keyOf } from "@shoal/sdk";
import {
  type ConnectUnaryRoute,
  EnvelopeSchema,
  type HeaderReader,
  type HeaderWriter,
  idempotentRequestId,
  requestId,
} from "@shoal/sdk/internal";
import type { Answer, NodeRuntime } from "../node/runtime.js";
import { toConnectError } from "./errors.js";

/**
 * The node's function routes: one per handler of every function, at its
 * standard path. Each request becomes an envelope for its instance; the reply
 * is the committed reply of the handler. `Shoal-Send: 1` makes it a one-way
 * send answered once durably accepted; `Idempotency-Key` makes retries safe.
 * Errors are already mapped to Connect codes (`toConnectError`).
 */
export function ingressRoutes(runtime: NodeRuntime): ConnectUnaryRoute[] {
  const routes: ConnectUnaryRoute[] = [];
  for (const { fn } of runtime.functions.values()) {
    for (const info of fn.handlers.values()) {
      const method = info.method as unknown as DescMethodUnary;
      const operation = `${method.parent.typeName}.${method.name}`;
      const call = async (request: Message, requestHeader: HeaderReader, responseHeader: HeaderWriter): Promise<Message> => {
        const key = keyOf(info, request) ?? "";
        if (fn.state !== undefined && key === "") {
          throw new ConnectError(
            `${fn.typeName}.${info.name}: the key field ${method.input.typeName}.${info.keyField?.name ?? "?"} is empty; set it to the instance key`,
            Code.InvalidArgument,
          );
        }
        const send = isTrue(requestHeader.get(headers.send));
        const idempotencyKey = requestHeader.get(headers.idempotencyKey) ?? "";
        const delayHeader = requestHeader.get(headers.delayMs);
        let delayMs = 0;
        if (delayHeader !== null) {
          delayMs = Number(delayHeader);
          if (!Number.isFinite(delayMs) || delayMs < 0 || delayMs > maxDelayMs) {
            throw new ConnectError(
              `${headers.delayMs} must be a number of milliseconds from 0 to ${maxDelayMs} (10 years), got "${delayHeader}"`,
              Code.InvalidArgument,
            );
          }
        }
        const now = runtime.clock.now();
        const id = idempotencyKey !== "" ? idempotentRequestId(fn.typeName, key, info.name, idempotencyKey) : requestId();
        const envelope = create(EnvelopeSchema, {
          id,
          target: { type: fn.typeName, key },
          handler: info.name,
          // The request travels decoded; its bytes are needed only where it is logged (a
          // one-way send) or hashed (an idempotency key).
          payload: send || idempotencyKey !== "" ? toBinary(method.input, request) : noBytes,
          idempotencyKey,
          deliverAtMs: send && delayMs > 0 ? BigInt(now + Math.round(delayMs)) : 0n,
          // Its own reply address: retries of one Idempotency-Key share the
          // envelope id, and each awaits its own answer. Without a key the
          // envelope id is this request's own already.
          replyTo: send
            ? undefined
            : { kind: { case: "ingress", value: { node: runtime.nodeId, request: idempotencyKey !== "" ? requestId() : id } } },
          traceparent: requestHeader.get("traceparent") ?? "",
          acceptedAtMs: BigInt(now),
        });
        if (send) {
          await runtime.accept(envelope);
          responseHeader.set(headers.messageId, id);
          return create(method.output);
        }
        const answer = await runtime.request(envelope, request);
        return toResponse(answer, method.output);
      };
      routes.push({
        method,
        call: (request, requestHeader, responseHeader) =>
          call(request, requestHeader, responseHeader).catch((err: unknown) => {
            throw toConnectError(err, operation);
          }),
      });
    }
  }
  return routes;
}

/**
 * Serves the function routes (by default the node's, from `ingressRoutes`)
 * through connect-es, at their Connect, gRPC and gRPC-web paths.
 */
export function registerIngress(
  router: ConnectRouter,
  runtime: NodeRuntime,
  routes: readonly ConnectUnaryRoute[] = ingressRoutes(runtime),
): void {
  const byService = new Map<DescService, Record<string, (req: Message, ctx: HandlerContext) => Promise<Message>>>();
  for (const route of routes) {
    const impl = byService.get(route.method.parent) ?? {};
    byService.set(route.method.parent, impl);
    impl[route.method.localName] = (request, ctx) => route.call(request, ctx.requestHeader, ctx.responseHeader);
  }
  for (const [service, impl] of byService) router.service(service, impl as never);
  reportParseErrorsAsInvalidArgument(router);
}

type UniversalHandler = ConnectRouter["handlers"][number];
type UniversalResponse = Awaited<ReturnType<UniversalHandler>>;

// connect-es answers a request body that is not valid protobuf binary with
// `internal` ("parse binary: ..."), while a malformed JSON body gets
// `invalid_argument`. Both are the client's fault, and DESIGN §12 promises
// InvalidArgument. Its size error names its own option, readMaxBytes, which a
// Shoal user never sets. The ingress rewrites those errors on their way out:
// in the Connect error body, in gRPC's trailers, and in gRPC-web's trailer
// frame (the only case that touches successful responses: a unary gRPC-web
// body is read whole before it is passed on).
function reportParseErrorsAsInvalidArgument(router: ConnectRouter) {
  router.handlers.forEach((original, i) => {
    const wrapped = Object.assign((req: Parameters<UniversalHandler>[0]) => original(req).then(rewriteErrors), original);
    router.handlers[i] = wrapped as UniversalHandler;
  });
}

const parseBinary = "parse binary:";
const sizeError = /^message size (?:(\d+) )?is larger than configured readMaxBytes (\d+)$/;
const textDecoder = new TextDecoder();

/** The error a client should see instead of connect-es's, or undefined to keep it. */
function rewrite(code: Code, message: string): { code: Code; message: string } | undefined {
  if (code === Code.Internal && message.startsWith(parseBinary)) {
    return { code: Code.InvalidArgument, message: `malformed request body: ${message}` };
  }
  const size = code === Code.ResourceExhausted ? sizeError.exec(message) : null;
  if (size !== null) {
    const what = size[1] !== undefined ? `the request of ${size[1]} bytes` : "the request";
    return {
      code,
      message: `${what} is larger than maxRequestBytes (${size[2]} bytes); send less, or raise ingress.maxRequestBytes in shoal.yaml (shoal dev --max-request-bytes)`,
    };
  }
  return undefined;
}

/** A Connect error as the ingress answers it: connect-es's parse and size errors in its own words (see above). */
export function rewriteRequestError(error: ConnectError): ConnectError {
  const fixed = rewrite(error.code, error.rawMessage);
  return fixed === undefined ? error : new ConnectError(fixed.message, fixed.code, error.metadata, undefined, error.cause);
}

// gRPC-web frames: a flags byte (0x80: trailers), a big-endian u32 length, the data.
async function* rewriteGrpcWebTrailer(body: AsyncIterable<Uint8Array>): AsyncIterable<Uint8Array> {
  const chunks: Uint8Array[] = [];
  for await (const chunk of body) chunks.push(chunk);
  const bytes = Buffer.concat(chunks);
  for (let offset = 0; offset + 5 <= bytes.length; ) {
    const length = bytes.readUInt32BE(offset + 1);
    const end = offset + 5 + length;
    if (end > bytes.length) break;
    if ((bytes[offset] ?? 0) & 0x80) {
      const trailer = bytes.subarray(offset + 5, end).toString("latin1");
      const status = /^grpc-status: *(\d+)\s*$/im.exec(trailer)?.[1];
      const message = /^grpc-message: *(.*)$/im.exec(trailer)?.[1]?.trim();
      const fixed =
        status !== undefined && message !== undefined ? rewrite(Number(status) as Code, decodeURIComponent(message)) : undefined;
      if (fixed !== undefined) {
        const text = Buffer.from(
          trailer
            .replace(/^grpc-status: *\d+/im, `grpc-status: ${fixed.code}`)
            .replace(/^grpc-message: *.*$/im, `grpc-message: ${encodeURIComponent(fixed.message)}`),
          "latin1",
        );
        const head = Buffer.alloc(5);
        head[0] = bytes[offset] ?? 0x80;
        head.writeUInt32BE(text.length, 1);
        yield Buffer.concat([bytes.subarray(0, offset), head, text, bytes.subarray(end)]);
        return;
      }
    }
    offset = end;
  }
  yield bytes;
}

function rewriteGrpcStatus(h: Headers | undefined) {
  const status = h?.get("grpc-status");
  const message = h?.get("grpc-message");
  const fixed = status != null && message != null ? rewrite(Number(status) as Code, decodeURIComponent(message)) : undefined;
  if (fixed !== undefined) {
    h?.set("grpc-status", String(fixed.code));
    h?.set("grpc-message", encodeURIComponent(fixed.message));
  }
}

// Synchronous but for a Connect error body: every response passes through here.
function rewriteErrors(res: UniversalResponse): UniversalResponse | Promise<UniversalResponse> {
  rewriteGrpcStatus(res.header);
  rewriteGrpcStatus(res.trailer);
  if (res.body === undefined) return res;
  const contentType = res.header?.get("content-type");
  if (contentType?.startsWith("application/grpc-web")) return { ...res, body: rewriteGrpcWebTrailer(res.body) };
  if (res.status < 400 || contentType !== "application/json") return res;
  return rewriteConnectError(res, res.body);
}

async function rewriteConnectError(res: UniversalResponse, resBody: AsyncIterable<Uint8Array>): Promise<UniversalResponse> {
  // A Connect unary error: one small JSON body.
  const chunks: Uint8Array[] = [];
  for await (const chunk of resBody) chunks.push(chunk);
  let body: Uint8Array = Buffer.concat(chunks);
  let status = res.status;
  try {
    const error = JSON.parse(textDecoder.decode(body)) as { code?: string; message?: string };
    const code = error.code === "internal" ? Code.Internal : error.code === "resource_exhausted" ? Code.ResourceExhausted : undefined;
    const fixed = code !== undefined && error.message !== undefined ? rewrite(code, error.message) : undefined;
    if (fixed !== undefined) {
      const changed = fixed.code !== code;
      body = new TextEncoder().encode(
        JSON.stringify({ ...error, code: changed ? "invalid_argument" : error.code, message: fixed.message }),
      );
      if (changed) status = 400;
      res.header?.delete("content-length");
    }
  } catch {
    // not a Connect error body: pass it on unchanged
  }
  return {
    ...res,
    status,
    body: (async function* () {
      yield body;
    })(),
  };
}

function isTrue(value: string | null): boolean {
  return value !== null && value !== "" && value !== "0" && value.toLowerCase() !== "false";
}

const noBytes = new Uint8Array(0);

/** The longest delay a `Shoal-Delay-Ms` header may ask for: 10 years (its due time must fit int64 ms). */
const maxDelayMs = 10 * 365 * 24 * 3600_000;

function toResponse({ reply, output: message }: Answer, output: DescService["methods"][number]["output"]): Message {
  if (reply.result.case === "ok") return message ?? fromBinary(output, reply.result.value);
  const failure = reply.result.value;
  throw new ConnectError(failure?.message ?? "the handler failed", (failure?.code ?? Code.Internal) as Code);
}
