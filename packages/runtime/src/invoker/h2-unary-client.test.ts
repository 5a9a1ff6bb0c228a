// The remote invoker's HTTP/2 client against scripted servers on real h2c
// sockets: what it sends, that calls share one session, and that each answer
// or fault gets the code Connect's client gives it (remote-invoker.ts names
// its faults from these codes).
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterEach, describe, expect, it } from "vitest";
import { createH2UnaryClient, type H2UnaryClient } from "./h2-unary-client.js";

const closers: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close();
});

type Answer = (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, body: Buffer) => void;

/** An h2c server whose every request `answer` answers; counts the sessions clients opened. */
async function server(answer: Answer) {
  const s = http2.createServer();
  const sessions = new Set<http2.ServerHttp2Session>();
  let opened = 0;
  s.on("session", (session) => {
    opened++;
    sessions.add(session);
    session.on("close", () => sessions.delete(session));
  });
  s.on("stream", (stream, headers) => {
    stream.on("error", () => {});
    const chunks: Buffer[] = [];
    stream.on("data", (c: Buffer) => chunks.push(c));
    stream.on("end", () => answer(stream, headers, Buffer.concat(chunks)));
  });
  await new Promise<void>((resolve) => s.listen(0, "127.0.0.1", resolve));
  const port = (s.address() as AddressInfo).port;
  closers.push(
    () =>
      new Promise<void>((resolve) => {
        for (const session of sessions) session.destroy();
        s.close(() => resolve());
      }),
  );
  return { url: `http://127.0.0.1:${port}`, opened: () => opened };
}

function clientOf(url: string, headers?: Record<string, string>): H2UnaryClient {
  const client = createH2UnaryClient({ url, headers, idleTimeoutMs: 60_000 });
  closers.push(() => client.close());
  return client;
}

const proto = (stream: http2.ServerHttp2Stream, body: Uint8Array) => {
  stream.respond({ ":status": 200, "content-type": "application/proto" });
  stream.end(body);
};

async function failure(call: Promise<unknown>): Promise<ConnectError> {
  const err = await call.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ConnectError);
  return err as ConnectError;
}

describe("createH2UnaryClient", () => {
  it("POSTs a Connect unary request below the URL's path with the given headers, and resolves the answer's bytes", async () => {
    const seen: http2.IncomingHttpHeaders[] = [];
    const s = await server((stream, headers, body) => {
      seen.push(headers);
      proto(stream, Buffer.concat([body, Buffer.from([9])]));
    });
    const client = clientOf(`${s.url}/prefix/`, { authorization: "Bearer t" });
    const answer = await client.call("/shoal.v1.FunctionService/Invoke", new Uint8Array([1, 2]), 1_500);
    expect([...answer]).toEqual([1, 2, 9]);
    expect(seen[0]).toMatchObject({
      ":method": "POST",
      ":path": "/prefix/shoal.v1.FunctionService/Invoke",
      "content-type": "application/proto",
      "connect-protocol-version": "1",
      "connect-timeout-ms": "1500",
      authorization: "Bearer t",
    });
  });

  it("sends concurrent calls on one session, and opens a new one after close", async () => {
    const s = await server((stream, _, body) => proto(stream, body));
    const client = clientOf(s.url);
    const answers = await Promise.all(Array.from({ length: 20 }, (_, i) => client.call("/x", new Uint8Array([i]), 2_000)));
    expect(answers.map((a) => a[0])).toEqual(Array.from({ length: 20 }, (_, i) => i));
    expect(s.opened()).toBe(1);
    client.close();
    expect([...(await client.call("/x", new Uint8Array([7]), 2_000))]).toEqual([7]);
    expect(s.opened()).toBe(2);
  });

  it.each([
    [
      "a Connect error (JSON) takes its code and message",
      (stream: http2.ServerHttp2Stream) => {
        stream.respond({ ":status": 412, "content-type": "application/json" });
        stream.end(JSON.stringify({ code: "failed_precondition", message: "other version" }));
      },
      Code.FailedPrecondition,
      "other version",
    ],
    [
      "a 5xx page that is no Connect error takes the status's code",
      (stream: http2.ServerHttp2Stream) => {
        stream.respond({ ":status": 503, "content-type": "text/html" });
        stream.end("<h1>down</h1>");
      },
      Code.Unavailable,
      "HTTP 503",
    ],
    [
      "a 200 with another content type is Internal",
      (stream: http2.ServerHttp2Stream) => {
        stream.respond({ ":status": 200, "content-type": "application/json" });
        stream.end("{}");
      },
      Code.Internal,
      "unsupported content type application/json",
    ],
    [
      "a stream reset is Internal (node reports it as a stream error first, as Connect's client sees it too)",
      (stream: http2.ServerHttp2Stream) => stream.close(http2.constants.NGHTTP2_REFUSED_STREAM),
      Code.Internal,
      "NGHTTP2_REFUSED_STREAM",
    ],
  ] as const)("%s", async (_, answer, code, text) => {
    const s = await server((stream) => answer(stream));
    const err = await failure(clientOf(s.url).call("/x", new Uint8Array([1]), 2_000));
    expect(Code[err.code]).toBe(Code[code]);
    expect(err.rawMessage).toContain(text);
  });

  it("gives up on a call with no answer within its timeout, with DeadlineExceeded", async () => {
    const s = await server(() => {});
    const err = await failure(clientOf(s.url).call("/x", new Uint8Array([1]), 100));
    expect(Code[err.code]).toBe("DeadlineExceeded");
  });

  it("reports a refused connection as Unavailable, with the node error as the cause", async () => {
    const s = await server((stream, _, body) => proto(stream, body));
    const port = new URL(s.url).port;
    await closers.pop()?.();
    const err = await failure(clientOf(`http://127.0.0.1:${port}`).call("/x", new Uint8Array([1]), 2_000));
    expect(Code[err.code]).toBe("Unavailable");
    expect(err.rawMessage).toContain("ECONNREFUSED");
    expect((err.cause as { code?: string }).code).toBe("ECONNREFUSED");
  });
});
