// An endpoint process's server as its environment configures it: TLS with
// client certificates (mTLS) on a real socket, with certificates openssl makes.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FunctionService } from "../gen/shoal/v1/function_pb.js";
import { EnvelopeSchema } from "../gen/shoal/v1/protocol_pb.js";
import { module } from "../module.js";
import { invokeRequestToProto, invokeResponseFromProto } from "../remote/function-protocol.js";
import { type FunctionServer, listenFunctions, listenOptionsFromEnv } from "./listen-functions.js";

let dir: string;
const pem = (name: string) => readFileSync(join(dir, name));

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "shoal-tls-"));
  const openssl = (args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  openssl(["req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=test-ca"]);
  for (const [name, ext] of [
    ["server", "subjectAltName=IP:127.0.0.1"],
    ["client", "extendedKeyUsage=clientAuth"],
  ] as const) {
    openssl(["req", ...ec, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${name}`]);
    const sign = ["x509", "-req", "-in", `${name}.csr`, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1"];
    writeFileSync(join(dir, `${name}.ext`), `${ext}\n`);
    openssl([...sign, "-out", `${name}.pem`, "-extfile", `${name}.ext`]);
  }
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("listenFunctions with the options of listenOptionsFromEnv", () => {
  let server: FunctionServer;
  beforeAll(async () => {
    const env = { SHOAL_TLS_CERT: join(dir, "server.pem"), SHOAL_TLS_KEY: join(dir, "server.key"), SHOAL_TLS_CA: join(dir, "ca.pem") };
    server = await listenFunctions(module(), listenOptionsFromEnv(["--port", "0", "--host", "127.0.0.1"], env));
  });
  afterAll(() => server?.close());

  const invoke = (nodeOptions: { ca: Buffer; cert?: Buffer; key?: Buffer }) => {
    const client = createClient(FunctionService, createConnectTransport({ baseUrl: server.url, httpVersion: "2", nodeOptions }));
    const address = { type: "shop.v1.Nobody", key: "x" };
    const envelope = create(EnvelopeSchema, { id: "m1", target: address, handler: "Anything" });
    return client
      .invoke(invokeRequestToProto({ address, state: undefined, messages: [{ envelope, journal: [] }] }))
      .then(invokeResponseFromProto);
  };

  it("serves HTTP/2 over TLS to a client with a certificate its CA signed", async () => {
    expect(server.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    const response = await invoke({ ca: pem("ca.pem"), cert: pem("client.pem"), key: pem("client.key") });
    expect(response.outcomes).toMatchObject([{ status: "done", reply: { result: { case: "error" } } }]);
  });

  it("refuses a client without a certificate", async () => {
    await expect(invoke({ ca: pem("ca.pem") })).rejects.toThrow();
  });
});

describe("listenOptionsFromEnv", () => {
  it("refuses a certificate without its key, and a port that is not a number", () => {
    expect(() => listenOptionsFromEnv([], { SHOAL_TLS_CERT: "server.pem" })).toThrow(
      "SHOAL_TLS_CERT and SHOAL_TLS_KEY go together: set both (PEM files) to serve TLS, or neither for plaintext",
    );
    expect(() => listenOptionsFromEnv([], { PORT: "-1" })).toThrow('port "-1" (--port or PORT) is not a port number: give 0 to 65535');
  });

  it("takes --port and --host before PORT and HOST", () => {
    expect(listenOptionsFromEnv(["--port", "7", "--host", "::1"], { PORT: "8", HOST: "a", SHOAL_BEARER_TOKEN: "t" })).toEqual({
      port: 7,
      host: "::1",
      bearerToken: "t",
      tls: undefined,
    });
  });
});
