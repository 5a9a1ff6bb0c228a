// A node on a nats-server that requires TLS (a certificate signed by the
// test's own CA) and a user and password, as a production NATS does: the
// node connects with storage.tls and storage.user/passwordEnv and serves; a
// wrong password, or a server certificate it cannot verify, stops it at
// start with the reason named. Runs the built bin (npm run build first).
import { type ChildProcess, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { makeTestCertificates, type TestCertificates } from "./support/certificates.js";
import { natsServerBin } from "./support/nats-cluster.js";
import { startBankNode, startBankNodeOnNats } from "./support/nats-node.js";
import { type Child, freePort } from "./support/processes.js";

let dir = "";
let certs: TestCertificates;
let server: ChildProcess | undefined;
let url = "";
const nodes: Child[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "shoal-nats-security-"));
  mkdirSync(join(dir, "certs"));
  certs = makeTestCertificates(join(dir, "certs"));
  const port = await freePort();
  url = `tls://127.0.0.1:${port}`;
  const args = ["-a", "127.0.0.1", "-p", String(port), "-js", "-sd", join(dir, "js"), "--user", "shoal", "--pass", "s3cret"];
  args.push("--tls", "--tlscert", certs.serverCert, "--tlskey", certs.serverKey, "--tlscacert", certs.ca);
  const started = spawn(natsServerBin, args, { stdio: ["ignore", "ignore", "pipe"] });
  server = started;
  let log = "";
  await new Promise<void>((resolve, reject) => {
    started.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
      log += chunk;
      if (log.includes("Server is ready")) resolve();
    });
    started.once("error", (err) => reject(new Error(`cannot start ${natsServerBin} (apt-get install nats-server)`, { cause: err })));
    started.once("exit", (code) => reject(new Error(`nats-server exited (${code}) before it was ready:\n${log}`)));
  });
}, 60_000);

afterAll(async () => {
  for (const node of nodes) if (node.process.exitCode === null && node.process.signalCode === null) node.process.kill("SIGKILL");
  server?.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
});

describe("a node on a nats-server that requires TLS and a password", () => {
  it("connects with its CA and a password from the environment, and serves", { timeout: 120_000 }, async () => {
    const { child, url: ingress } = await startBankNodeOnNats({
      dir,
      name: "good",
      servers: [url],
      port: await freePort(),
      storageExtra: `tls: { ca: ${JSON.stringify(certs.ca)} }, user: shoal, passwordEnv: SHOAL_TEST_NATS_PASSWORD`,
      env: { SHOAL_TEST_NATS_PASSWORD: "s3cret" },
    });
    nodes.push(child);
    const res = await fetch(`${ingress}/bank.v1.Account/Deposit`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ account: "alice", amount: "5", transferId: "t-1" }),
      signal: AbortSignal.timeout(30_000),
    });
    expect(await res.json()).toEqual({ balance: "5" });
  });

  it("stops at start with a wrong password, naming the authorization failure", { timeout: 60_000 }, async () => {
    const child = startBankNode({
      dir,
      name: "wrong-password",
      servers: [url],
      port: await freePort(),
      storageExtra: `tls: { ca: ${JSON.stringify(certs.ca)} }, user: shoal, password: guessed`,
    });
    nodes.push(child);
    expect(await child.exited).not.toBe(0);
    expect(child.stderr()).toMatch(/cannot open the nats backend on tls:\/\/127\.0\.0\.1:\d+.*Authorization Violation/i);
  });

  it("stops at start when it cannot verify the server's certificate (no storage.tls.ca)", { timeout: 60_000 }, async () => {
    const child = startBankNode({
      dir,
      name: "no-ca",
      servers: [url],
      port: await freePort(),
      storageExtra: "user: shoal, password: s3cret",
    });
    nodes.push(child);
    expect(await child.exited).not.toBe(0);
    expect(child.stderr()).toMatch(/cannot open the nats backend on tls:\/\/127\.0\.0\.1:\d+.*certificate/i);
  });
});
