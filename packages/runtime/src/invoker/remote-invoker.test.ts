// The remote invoker against scripted endpoints on real HTTP/2 sockets (h2c
// and TLS): what it does with each answer and fault. Fault tests from a real
// endpoint process (serveFunctions) are in test/remote-functions.test.ts.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import * as http2 from "node:http2";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { Logger } from "@shoal/sdk";
import {
  EnvelopeSchema,
  FunctionService,
  functionProto as fp,
  type functionProto,
  invokeRequestFromProto,
  invokeResponseToProto,
  okReply,
} from "@shoal/sdk/internal";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { makeTestCertificates } from "../../../../test/support/certificates.js";
import type { InvokeRequest, InvokeResponse } from "./invoker.js";
import { createRemoteInvoker, type RemoteInvokerOptions } from "./remote-invoker.js";

const closers: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close();
});

type Handler = (request: functionProto.InvokeRequest, headers: Headers) => Promise<functionProto.InvokeResponse>;
type ManyHandler = (request: functionProto.InvokeManyRequest) => Promise<functionProto.InvokeManyResponse>;

/**
 * An endpoint on a real socket: `handler` answers Invoke, `many` InvokeMany
 * (without it, connect-node answers Unimplemented, as an endpoint of an older
 * SDK), or `raw` answers the HTTP/2 stream itself. `paths` lists the path of each request it got.
 */
async function endpoint(
  options: {
    handler?: Handler;
    many?: ManyHandler;
    raw?: (res: http2.Http2ServerResponse) => void;
    tls?: http2.SecureServerOptions;
    /** The only paths served; any other gets a plain 404, as a server that does not know the method. */
    paths?: readonly string[];
  } = {},
) {
  const connect = connectNodeAdapter({
    routes: (router) =>
      router.service(FunctionService, {
        invoke: (request, context) => (options.handler ?? answer)(request, context.requestHeader),
        ...(options.many === undefined ? {} : { invokeMany: options.many }),
      }),
  });
  const paths: string[] = [];
  const listener = (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => {
    paths.push(req.url);
    if (options.paths !== undefined && !options.paths.includes(req.url)) res.writeHead(404).end();
    else if (options.raw !== undefined) options.raw(res);
    else connect(req, res);
  };
  const server = options.tls !== undefined ? http2.createSecureServer(options.tls, listener) : http2.createServer(listener);
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (s) => {
    sessions.add(s);
    s.on("close", () => sessions.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as { port: number }).port;
  closers.push(
    () =>
      new Promise<void>((resolve) => {
        for (const s of sessions) s.destroy();
        server.close(() => resolve());
      }),
  );
  return { port, url: `${options.tls !== undefined ? "https" : "http"}://127.0.0.1:${port}`, paths };
}

/** What a correct endpoint answers: each message done, writing one byte of state. */
async function answer(request: functionProto.InvokeRequest): Promise<functionProto.InvokeResponse> {
  const req = invokeRequestFromProto(request);
  return invokeResponseToProto(correct(req));
}

function correct(req: InvokeRequest): InvokeResponse {
  return {
    address: req.address,
    outcomes: req.messages.map(() => ({
      status: "done",
      reply: okReply(new Uint8Array([1])),
      effects: { state: { kind: "write", bytes: new Uint8Array([7]) }, sends: [], cancels: [], egress: [] },
    })),
  };
}

/** A cap of `max` requests in flight, as the node's semaphore gives the invoker (the shard layer is above this one). */
function cap(max: number): RemoteInvokerOptions["limit"] {
  let free = max;
  const waiting: Array<() => void> = [];
  return {
    acquire: () => (free-- > 0 ? Promise.resolve() : new Promise<void>((resolve) => waiting.push(resolve))),
    release: () => {
      free++;
      waiting.shift()?.();
    },
  };
}

/** An invoker of `url` with quick retries, its log lines and metrics. */
function invokerOf(url: string, options: Partial<RemoteInvokerOptions> = {}) {
  const lines: string[] = [];
  const logger: Logger = {
    debug() {},
    info() {},
    warn: (message) => lines.push(`warn: ${message}`),
    error: (message) => lines.push(`error: ${message}`),
  };
  const failures: string[] = [];
  const batches: number[] = [];
  const invoker = createRemoteInvoker({
    url,
    timeoutMs: 2_000,
    limit: cap(8),
    maxBatch: 4,
    retry: { maxAttempts: 3, initialDelayMs: 1, maxDelayMs: 5 },
    logger,
    metrics: {
      remoteInvokeFailed: (endpoint, reason) => failures.push(`${endpoint} ${reason}`),
      remoteInvoked: (_, messages) => batches.push(messages),
    },
    ...options,
  });
  closers.push(() => invoker.close());
  return { invoker, lines, failures, batches };
}

const request = (key = "a", messages = 1): InvokeRequest => ({
  address: { type: "bank.v1.Account", key },
  state: new Uint8Array([5]),
  messages: Array.from({ length: messages }, (_, i) => ({
    envelope: create(EnvelopeSchema, {
      id: `m${i}`,
      target: { type: "bank.v1.Account", key },
      handler: "Deposit",
      payload: new Uint8Array([i]),
    }),
    journal: [],
  })),
});

describe("createRemoteInvoker", () => {
  it("sends the instance, its state and the batch, and takes a valid answer", async () => {
    const seen: InvokeRequest[] = [];
    const e = await endpoint({
      handler: async (r) => {
        seen.push(invokeRequestFromProto(r));
        return answer(r);
      },
    });
    const t = invokerOf(e.url);
    const response = await t.invoker.invoke(request("a", 3));
    expect(response.outcomes.map((o) => o.status)).toEqual(["done", "done", "done"]);
    expect(seen[0]?.state).toEqual(new Uint8Array([5]));
    expect(seen[0]?.messages.map((m) => m.envelope.id)).toEqual(["m0", "m1", "m2"]);
    expect(t.batches).toEqual([3]);
    expect(t.failures).toEqual([]);
  });

  it.each([
    [
      "an endpoint that hangs",
      "timeout",
      (n: number) => (n === 1 ? new Promise<never>(() => {}) : undefined),
      "no answer within 200 ms (timeoutMs)",
    ],
    [
      "an answer of another protocol version",
      "protocol_version",
      (n: number, r: functionProto.InvokeResponse) => (n === 1 ? { ...r, protocolVersion: 2 } : undefined),
      "the endpoint sent protocol version 2, this runtime speaks version 1",
    ],
    [
      "effects for another instance",
      "wrong_instance",
      (n: number, r: functionProto.InvokeResponse) =>
        n === 1 ? { ...r, address: { $typeName: "shoal.v1.Address", type: "bank.v1.Account", key: "b" } } : undefined,
      "the invoker answered for instance bank.v1.Account/b, not bank.v1.Account/a",
    ],
    [
      "more outcomes than messages",
      "outcome_count",
      (n: number, r: functionProto.InvokeResponse) => (n === 1 ? { ...r, outcomes: [...r.outcomes, ...r.outcomes] } : undefined),
      "the invoker answered 2 outcome(s) for 1 message(s)",
    ],
    [
      "an unavailable endpoint",
      "unavailable",
      (n: number) => (n === 1 ? Promise.reject(new ConnectError("draining", Code.Unavailable)) : undefined),
      "draining",
    ],
  ] as const)(
    "retries %s (reason %s): one log line naming the endpoint, one metric, then the valid answer",
    async (_, reason, fault, text) => {
      let n = 0;
      const e = await endpoint({
        handler: async (r) => {
          const good = await answer(r);
          const bad = fault(++n, good);
          return bad === undefined ? good : ((await bad) as functionProto.InvokeResponse);
        },
      });
      // Only the hang needs a short timeout; a loaded machine may take longer than that to answer well.
      const t = invokerOf(e.url, reason === "timeout" ? { timeoutMs: 200 } : {});
      const response = await t.invoker.invoke(request());
      expect(response.outcomes).toMatchObject([{ status: "done" }]);
      expect(n).toBe(2);
      expect(t.failures).toEqual([`${e.url} ${reason}`]);
      expect(t.lines).toHaveLength(1);
      expect(t.lines[0]).toContain(
        `warn: remote function endpoint ${e.url}: Invoke of 1 message(s) for bank.v1.Account/a failed (${reason}): `,
      );
      expect(t.lines[0]).toContain(text);
      expect(t.lines[0]).toContain("nothing of it was committed, sending it again in 1 ms (attempt 1 of 3)");
    },
  );

  it.each([
    [
      "garbage",
      "garbage",
      (res: http2.Http2ServerResponse) => res.writeHead(200, { "content-type": "application/proto" }).end(Buffer.from([0xff, 0xff, 0xff])),
    ],
    ["a 500", "unknown", (res: http2.Http2ServerResponse) => res.writeHead(500).end("oops")],
    ["a 503", "unavailable", (res: http2.Http2ServerResponse) => res.writeHead(503).end()],
  ] as const)(
    "fails the run after maxAttempts answers of %s (reason %s), naming the endpoint and the last fault",
    async (_, reason, raw) => {
      const e = await endpoint({ raw });
      const t = invokerOf(e.url);
      const response = await t.invoker.invoke(request());
      expect(response.outcomes).toEqual([
        {
          status: "failed",
          retryable: true,
          message: expect.stringContaining(
            `remote function endpoint ${e.url}: Invoke of 1 message(s) for bank.v1.Account/a failed 3 time(s), last (${reason}): `,
          ),
        },
      ]);
      expect(t.failures).toEqual([1, 2, 3].map(() => `${e.url} ${reason}`));
      expect(t.lines.map((l) => l.slice(0, 6))).toEqual(["warn: ", "warn: ", "error:"]);
    },
  );

  it("retries a refused connection until the endpoint listens", async () => {
    const e = await endpoint();
    const closed = `http://127.0.0.1:${e.port + 1}`;
    const t = invokerOf(closed, { retry: { maxAttempts: 2, initialDelayMs: 1, maxDelayMs: 1 } });
    const response = await t.invoker.invoke(request());
    expect(response.outcomes).toMatchObject([{ status: "failed", message: expect.stringContaining("last (unavailable)") }]);
    expect(t.failures).toEqual([`${closed} unavailable`, `${closed} unavailable`]);
  });

  it("keeps at most maxConcurrent requests in flight; the others wait and none is dropped", async () => {
    let inFlight = 0;
    let most = 0;
    const e = await endpoint({
      handler: async (r) => {
        most = Math.max(most, ++inFlight);
        await new Promise((resolve) => setTimeout(resolve, 20));
        inFlight--;
        return answer(r);
      },
    });
    const t = invokerOf(e.url, { limit: cap(2) });
    const responses = await Promise.all(["a", "b", "c", "d", "e", "f"].map((key) => t.invoker.invoke(request(key))));
    expect(responses.map((r) => r.address.key)).toEqual(["a", "b", "c", "d", "e", "f"]);
    expect(responses.every((r) => r.outcomes[0]?.status === "done")).toBe(true);
    expect(most).toBe(2);
  });

  it("sends the bearer token", async () => {
    const e = await endpoint({
      handler: async (r, headers) => {
        if (headers.get("authorization") !== "Bearer s3cret") throw new ConnectError("bad token", Code.Unauthenticated);
        return answer(r);
      },
    });
    expect((await invokerOf(e.url, { bearerToken: "s3cret" }).invoker.invoke(request())).outcomes).toMatchObject([{ status: "done" }]);
    const wrong = invokerOf(e.url, { bearerToken: "guess", retry: { maxAttempts: 1, initialDelayMs: 0, maxDelayMs: 0 } });
    expect((await wrong.invoker.invoke(request())).outcomes).toMatchObject([
      { status: "failed", message: expect.stringContaining("last (unauthenticated): [unauthenticated] bad token") },
    ]);
  });

  describe("over TLS with a custom CA", () => {
    const dir = mkdtempSync(join(tmpdir(), "shoal-tls-"));
    afterAll(() => rmSync(dir, { recursive: true, force: true }));
    const pem = (file: string) => readFileSync(file);
    it("trusts the endpoint's certificate through the configured CA, and presents its client certificate (mTLS)", async () => {
      const certs = makeTestCertificates(dir);
      const e = await endpoint({
        tls: { key: pem(certs.serverKey), cert: pem(certs.serverCert), ca: pem(certs.ca), requestCert: true, rejectUnauthorized: true },
      });
      const once = { maxAttempts: 1, initialDelayMs: 0, maxDelayMs: 0 };
      const mtls = invokerOf(e.url, { tls: { ca: pem(certs.ca), cert: pem(certs.clientCert), key: pem(certs.clientKey) }, retry: once });
      expect((await mtls.invoker.invoke(request())).outcomes).toMatchObject([{ status: "done" }]);

      // Without a client certificate the endpoint refuses the connection.
      const noCert = invokerOf(e.url, { tls: { ca: pem(certs.ca) }, retry: once });
      const refused = await noCert.invoker.invoke(request());
      expect(refused.outcomes).toMatchObject([
        { status: "failed", message: expect.stringContaining("last (tls): the TLS connection failed") },
      ]);
      expect(noCert.failures).toEqual([`${e.url} tls`]);

      // Without the CA, the endpoint's certificate is not trusted.
      const noCa = invokerOf(e.url, { tls: { cert: pem(certs.clientCert), key: pem(certs.clientKey) }, retry: once });
      const untrusted = await noCa.invoker.invoke(request());
      expect(untrusted.outcomes).toMatchObject([
        { status: "failed", message: expect.stringContaining("last (tls): the TLS connection failed") },
      ]);
      expect(noCa.failures).toEqual([`${e.url} tls`]);
    });
  });
});

const invokePath = "/shoal.v1.FunctionService/Invoke";
const manyPath = "/shoal.v1.FunctionService/InvokeMany";

/** What a correct endpoint answers to InvokeMany: each request as Invoke answers it. */
async function answerMany(request: functionProto.InvokeManyRequest): Promise<functionProto.InvokeManyResponse> {
  const results = await Promise.all(request.requests.map(async (r) => ({ result: { case: "response" as const, value: await answer(r) } })));
  return create(fp.InvokeManyResponseSchema, { results });
}

const keysOf = (request: functionProto.InvokeManyRequest) => request.requests.map((r) => r.address?.key);

describe("createRemoteInvoker: several instances in one InvokeMany request", () => {
  it("sends invocations of distinct instances that are ready together in one InvokeMany, each with its own answer; one alone goes as Invoke", async () => {
    const batches: Array<Array<string | undefined>> = [];
    const e = await endpoint({
      many: async (r) => {
        batches.push(keysOf(r));
        return answerMany(r);
      },
    });
    const t = invokerOf(e.url);
    const responses = await Promise.all(["a", "b", "c"].map((key) => t.invoker.invoke(request(key, key === "b" ? 2 : 1))));
    expect(responses.map((r) => [r.address.key, r.outcomes.map((o) => o.status)])).toEqual([
      ["a", ["done"]],
      ["b", ["done", "done"]],
      ["c", ["done"]],
    ]);
    expect(batches).toEqual([["a", "b", "c"]]);
    expect(t.batches).toEqual([1, 2, 1]);
    expect((await t.invoker.invoke(request("d"))).outcomes).toMatchObject([{ status: "done" }]);
    expect(e.paths).toEqual([manyPath, invokePath]);
    expect(t.failures).toEqual([]);
  });

  it("puts at most invokeMany.maxRequests in one request, never two invocations of one instance, and sends a request over maxBytes alone", async () => {
    const batches: Array<Array<string | undefined>> = [];
    const e = await endpoint({
      many: async (r) => {
        batches.push(keysOf(r));
        return answerMany(r);
      },
    });
    const t = invokerOf(e.url, { invokeMany: { maxRequests: 2 } });
    const keys = ["a", "a", "b", "c", "d"];
    const responses = await Promise.all(keys.map((key) => t.invoker.invoke(request(key))));
    expect(responses.map((r) => r.address.key)).toEqual(keys);
    // In queue order; the second "a" waits for the next request, and "d", left alone, goes as Invoke.
    expect(batches).toEqual([
      ["a", "b"],
      ["a", "c"],
    ]);
    expect(e.paths.filter((p) => p === invokePath)).toHaveLength(1);

    const small = invokerOf(e.url, { invokeMany: { maxBytes: 1 } });
    await Promise.all(["e", "f"].map((key) => small.invoker.invoke(request(key))));
    expect(e.paths.slice(-2)).toEqual([invokePath, invokePath]);
  });

  it.each([
    ["an endpoint that does not know the method (404)", { paths: [invokePath] }],
    ["an endpoint that answers Unimplemented", {}],
  ])("sends each invocation as Invoke to %s, and remembers it", async (_, only) => {
    const e = await endpoint(only);
    const t = invokerOf(e.url);
    const first = await Promise.all(["a", "b"].map((key) => t.invoker.invoke(request(key))));
    const second = await Promise.all(["c", "d"].map((key) => t.invoker.invoke(request(key))));
    expect([...first, ...second].map((r) => [r.address.key, r.outcomes[0]?.status])).toEqual([
      ["a", "done"],
      ["b", "done"],
      ["c", "done"],
      ["d", "done"],
    ]);
    expect(e.paths).toEqual([manyPath, invokePath, invokePath, invokePath, invokePath]);
    expect(t.failures).toEqual([]);
  });

  it("fails only the invocation whose request the endpoint refuses; the others of the request take their answers", async () => {
    let refusals = 0;
    const e = await endpoint({
      many: async (r) => {
        const good = await answerMany(r);
        good.results.forEach((result, i) => {
          if (r.requests[i]?.address?.key !== "b") return;
          refusals++;
          result.result = {
            case: "error",
            value: create(fp.InvokeErrorSchema, { code: Code.FailedPrecondition, message: "speaks version 7" }),
          };
        });
        return good;
      },
    });
    const t = invokerOf(e.url);
    const responses = await Promise.all(["a", "b", "c"].map((key) => t.invoker.invoke(request(key))));
    expect(responses.map((r) => [r.address.key, r.outcomes[0]?.status])).toEqual([
      ["a", "done"],
      ["b", "done"],
      ["c", "done"],
    ]);
    // b alone on its retry: an Invoke, which the endpoint answers.
    expect(refusals).toBe(1);
    expect(e.paths).toEqual([manyPath, invokePath]);
    expect(t.failures).toEqual([`${e.url} protocol_version`]);
    expect(t.lines).toEqual([
      `warn: remote function endpoint ${e.url}: Invoke of 1 message(s) for bank.v1.Account/b failed (protocol_version): [failed_precondition] speaks version 7; nothing of it was committed, sending it again in 1 ms (attempt 1 of 3)`,
    ]);
  });

  it.each([
    [
      "answers fewer results than requests",
      "garbage",
      (r: functionProto.InvokeManyResponse) => ({ ...r, results: r.results.slice(1) }),
      "the InvokeMany answer holds 1 result(s) for 2 request(s)",
    ],
    [
      "answers more results than requests",
      "garbage",
      (r: functionProto.InvokeManyResponse) => ({ ...r, results: [...r.results, ...r.results] }),
      "the InvokeMany answer holds 4 result(s) for 2 request(s)",
    ],
    [
      "answers the results out of order",
      "wrong_instance",
      (r: functionProto.InvokeManyResponse) => ({ ...r, results: [...r.results].reverse() }),
      "the invoker answered for instance bank.v1.Account/",
    ],
    [
      "answers a result with neither response nor error",
      "garbage",
      (r: functionProto.InvokeManyResponse) => ({ ...r, results: r.results.map(() => create(fp.InvokeManyResultSchema)) }),
      "holds neither a response nor an error",
    ],
    ["hangs", "timeout", () => new Promise<never>(() => {}), "no answer within 300 ms (timeoutMs)"],
  ] as const)(
    "an endpoint that %s: each invocation of the request logs and counts it (%s), nothing of it is used, and each is sent again",
    async (_, reason, lie, text) => {
      let n = 0;
      const e = await endpoint({
        many: async (r) => {
          const good = await answerMany(r);
          return ++n === 1 ? ((await lie(good)) as functionProto.InvokeManyResponse) : good;
        },
      });
      const t = invokerOf(e.url, reason === "timeout" ? { timeoutMs: 300 } : {});
      const responses = await Promise.all(["a", "b"].map((key) => t.invoker.invoke(request(key))));
      // What came back in the end is each instance's own answer.
      expect(responses.map((r) => [r.address.key, r.outcomes.map((o) => o.status)])).toEqual([
        ["a", ["done"]],
        ["b", ["done"]],
      ]);
      expect(t.failures).toEqual([`${e.url} ${reason}`, `${e.url} ${reason}`]);
      expect(t.lines).toHaveLength(2);
      for (const key of ["a", "b"]) {
        const line = t.lines.find((l) => l.includes(`bank.v1.Account/${key} failed`));
        expect(line).toContain(`failed (${reason}): `);
        expect(line).toContain(text);
      }
    },
  );
});
