import type { IncomingHttpHeaders } from "node:http";
import { fromJsonString } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import { codeToString } from "@connectrpc/connect/protocol-connect";
import { headers as shoalHeaders } from "@shoal/sdk";

type UniversalHandler = ConnectRouter["handlers"][number];
type UniversalRequest = Parameters<UniversalHandler>[0];
type UniversalResponse = Awaited<ReturnType<UniversalHandler>>;

/** Paths outside the Connect routes that `listen` serves, with their one method. */
export const plainRoutes: Readonly<Record<string, "GET">> = { "/metrics": "GET", "/healthz": "GET" };

// Content types a client might try; those a handler accepts are listed when it refuses one.
const candidateContentTypes = [
  "application/json",
  "application/proto",
  "application/grpc",
  "application/grpc+proto",
  "application/grpc+json",
  "application/grpc-web",
  "application/grpc-web+proto",
  "application/grpc-web+json",
];

function connectErrorBody(code: Code, message: string): string {
  return JSON.stringify({ code: codeToString(code), message });
}

function errorResponse(status: number, code: Code, message: string, extra: Record<string, string> = {}): UniversalResponse {
  const body = new TextEncoder().encode(connectErrorBody(code, message));
  return {
    status,
    header: new Headers({ "content-type": "application/json", ...extra }),
    body: (async function* () {
      yield body;
    })(),
  };
}

/**
 * connect-es answers a wrong HTTP method (405) and an unsupported content type
 * (415) with an empty body, which leaves a user with curl guessing. These
 * answers carry a Connect error naming what was sent and what is accepted.
 * With `Shoal-Reject-Unknown-Fields: 1`, a Connect JSON request is also
 * checked for fields its message does not have, whatever the ingress's
 * `ignoreUnknownJsonFields` (`shoal call` sets it: a person typed that JSON).
 */
export function explainRejections(router: ConnectRouter, maxRequestBytes: number): void {
  router.handlers.forEach((original, i) => {
    const accepted = candidateContentTypes.filter((type) => original.supportedContentType(type));
    const route = `${original.service.typeName}/${original.method.name}`;
    const explain = (req: UniversalRequest, res: UniversalResponse): UniversalResponse => {
      if (res.status === 405 && res.body === undefined) {
        const allowed = original.allowedMethods.join(", ");
        return errorResponse(405, Code.Unimplemented, `${req.method} is not allowed on /${route}; use ${allowed}`, { allow: allowed });
      }
      if (res.status === 415 && res.body === undefined) {
        const got = req.header.get("content-type");
        return errorResponse(
          415,
          Code.Unimplemented,
          `/${route} does not accept content type ${got === null ? "(none)" : `"${got}"`}; send one of: ${accepted.join(", ")}`,
          { "accept-post": accepted.join(", ") },
        );
      }
      return res;
    };
    // Without the header that asks for the check, no async step of its own: every request passes here.
    const wrapped = Object.assign((req: UniversalRequest): Promise<UniversalResponse> => {
      if (!asksToRejectUnknownFields(req)) return original(req).then((res) => explain(req, res));
      return rejectUnknownJsonFields(original, req, maxRequestBytes).then((checked) =>
        "status" in checked ? checked : original(checked).then((res) => explain(checked, res)),
      );
    }, original);
    router.handlers[i] = wrapped as UniversalHandler;
  });
}

async function rejectUnknownJsonFields(
  handler: UniversalHandler,
  req: UniversalRequest,
  maxRequestBytes: number,
): Promise<UniversalRequest | UniversalResponse> {
  if (!asksToRejectUnknownFields(req)) return req;
  const contentType = req.header.get("content-type") ?? "";
  const encoding = req.header.get("content-encoding") ?? "identity";
  if (!/^application\/json\b/.test(contentType) || encoding !== "identity" || !isByteStream(req.body)) return req;
  const chunks: Uint8Array[] = [];
  let size = 0;
  const body = req.body[Symbol.asyncIterator]();
  for (let next = await body.next(); !next.done; next = await body.next()) {
    chunks.push(next.value);
    size += next.value.length;
    // Too large: let connect-es refuse it with the size error.
    if (size > maxRequestBytes) break;
  }
  if (size <= maxRequestBytes) {
    try {
      fromJsonString(handler.method.input, new TextDecoder().decode(Buffer.concat(chunks)), { ignoreUnknownFields: false });
    } catch (err) {
      return errorResponse(400, Code.InvalidArgument, ConnectError.from(err).rawMessage);
    }
  }
  return {
    ...req,
    body: (async function* () {
      yield* chunks;
      for (let next = await body.next(); !next.done; next = await body.next()) yield next.value;
    })(),
  };
}

function asksToRejectUnknownFields(req: UniversalRequest): boolean {
  const flag = req.header.get(shoalHeaders.rejectUnknownFields);
  return flag !== null && flag !== "0" && flag !== "" && req.method === "POST";
}

function isByteStream(body: UniversalRequest["body"]): body is AsyncIterable<Uint8Array> {
  return typeof body === "object" && body !== null && Symbol.asyncIterator in body;
}

/**
 * Answers a request for a path that no route serves: a Connect error (or, to
 * a gRPC client, a trailers-only gRPC status) naming the service or method
 * that is not here and what is.
 */
export function answerUnrouted(
  req: { readonly url?: string; readonly method?: string; readonly headers: IncomingHttpHeaders },
  res: { writeHead(status: number, headers: Record<string, string>): unknown; end(body: string): unknown },
  handlers: readonly UniversalHandler[],
): void {
  const path = req.url?.split("?", 1)[0] ?? "";
  const plain = plainRoutes[path];
  if (plain !== undefined) {
    const message = `${req.method} is not allowed on ${path}; use ${plain}`;
    res.writeHead(405, { "content-type": "application/json", allow: plain });
    res.end(connectErrorBody(Code.Unimplemented, message));
    return;
  }
  const services = new Map<string, string[]>();
  for (const h of handlers) services.set(h.service.typeName, [...(services.get(h.service.typeName) ?? []), h.method.name]);
  const serviceList = [...services.keys()].sort().join(", ");
  const [, service, method] = /^\/([^/]+)\/([^/]+)$/.exec(path) ?? [];
  const methods = service !== undefined ? services.get(service) : undefined;
  const message =
    service === undefined
      ? `no route for ${req.method} ${path}: calls go to /<package.Service>/<Method> (services here: ${serviceList}); ` +
        `other routes: ${Object.entries(plainRoutes)
          .map(([p, m]) => `${m} ${p}`)
          .join(", ")}`
      : methods === undefined
        ? `unknown service ${service} in ${path}: this node serves ${serviceList}`
        : `${service} has no method ${method} (its methods: ${methods.sort().join(", ")})`;
  const contentType = req.headers["content-type"] ?? "";
  if (/^application\/grpc/.test(contentType)) {
    // gRPC and gRPC-web clients read the status from headers of a trailers-only response.
    res.writeHead(200, {
      "content-type": contentType,
      "grpc-status": String(Code.Unimplemented),
      "grpc-message": encodeURIComponent(message),
    });
    res.end("");
    return;
  }
  res.writeHead(404, { "content-type": "application/json" });
  res.end(connectErrorBody(Code.Unimplemented, message));
}
