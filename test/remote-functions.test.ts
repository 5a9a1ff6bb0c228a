// Remote functions from real processes: `shoal serve --config shoal.yaml`
// runs the runtime with no user code, the bank's functions run in a separate
// endpoint process (serveFunctions from @shoal/sdk/serve) that misbehaves as
// each test sets it (test/support/fault-endpoint.ts). For each fault: the
// runtime's log line naming the endpoint, its metric, and the accounts'
// balances and ledgers showing that nothing was lost or applied twice.
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { makeTestCertificates } from "./support/certificates.js";
import { type Child, freePort, repoRoot, shoalBin, start } from "./support/processes.js";

const endpointScript = join(repoRoot, "test/support/fault-endpoint.ts");
const bankEndpoint = join(repoRoot, "examples/bank/dist/serve-functions.js");
const dir = mkdtempSync(join(tmpdir(), "shoal-remote-"));
let runtimePort = 0;
let endpointPort = 0;
let runtimeUrl = "";
let endpointUrl = "";
let runtime: Child | undefined;
let endpoint: Child | undefined;

/**
 * shoal.yaml: the bank served by the endpoint, by default with retries wide
 * enough to outlast an endpoint's restart; `endpoint` adds keys to its entry.
 */
function writeConfig(retries: { endpointAttempts: number; runtimeAttempts: number }, endpoint = "") {
  writeFileSync(
    join(dir, "shoal.yaml"),
    `shards: 4
ingress: { port: ${runtimePort} }
storage: { directory: ./data }
retry: { maxAttempts: ${retries.runtimeAttempts}, initialDelayMs: 100, maxDelayMs: 500 }
functions:
  descriptors: bank.binpb
  remote:
    - package: bank.v1
      url: "${endpointUrl}"
      timeoutMs: 3000
      maxConcurrent: 4
      maxBatch: 8
      retry: { maxAttempts: ${retries.endpointAttempts}, initialDelayMs: 100, maxDelayMs: 1000 }
${endpoint}log: { level: warn }
`,
  );
}

async function startRuntime(env: NodeJS.ProcessEnv = {}) {
  runtime = start(process.execPath, [shoalBin, "serve", "--config", join(dir, "shoal.yaml")], { env });
  await runtime.waitFor(/shoal serve: listening at /, 60_000);
}

async function startEndpoint(fault: string, times?: number) {
  const env: NodeJS.ProcessEnv = { PORT: String(endpointPort), SHOAL_FAULT: fault };
  if (times !== undefined) env.SHOAL_FAULT_TIMES = String(times);
  endpoint = start(process.execPath, ["--import", "tsx", endpointScript], { env });
  await endpoint.waitFor(/endpoint listening at /, 60_000);
  return endpoint;
}

async function stop(child: Child | undefined) {
  if (child === undefined || child.process.exitCode !== null || child.process.signalCode !== null) return;
  child.process.kill("SIGKILL");
  await child.exited;
}

/** Calls the runtime with Connect JSON; resolves with the status and body. */
async function call(method: string, body: object, idempotencyKey?: string) {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (idempotencyKey !== undefined) headers["idempotency-key"] = idempotencyKey;
  const res = await fetch(`${runtimeUrl}/bank.v1.Account/${method}`, { method: "POST", headers, body: JSON.stringify(body) });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

const deposit = (account: string, amount: number, transferId: string) =>
  call("Deposit", { account, amount: String(amount), transferId }, `deposit-${transferId}`);

/** An account's balance and the transfer ids in its ledger. */
async function account(name: string) {
  const got = await call("Get", { account: name });
  expect(got.status).toBe(200);
  const ledger = (got.body.ledger ?? []) as Array<{ transferId: string; amount: string }>;
  return { balance: Number(got.body.balance ?? 0), transfers: ledger.map((e) => e.transferId) };
}

/** A sample of the runtime's metrics, by its name and labels as written; 0 when absent. */
async function metric(series: string): Promise<number> {
  const text = await (await fetch(`${runtimeUrl}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  return line === undefined ? 0 : Number(line.slice(line.lastIndexOf(" ") + 1));
}

/** The runtime's `shoal_remote_invoke_errors_total` for the endpoint and `reason`. */
const remoteErrors = (reason: string) => metric(`shoal_remote_invoke_errors_total{endpoint="${endpointUrl}",reason="${reason}"}`);

/** The runtime's warnings about the endpoint for `reason`, as logged (JSON lines). */
function faultLines(reason: string): string[] {
  return (runtime?.stderr() ?? "")
    .split("\n")
    .filter((l) => l.includes(`"reason":"${reason}"`))
    .map((l) => (JSON.parse(l) as { msg: string }).msg);
}

beforeAll(async () => {
  runtimePort = await freePort();
  endpointPort = await freePort();
  runtimeUrl = `http://127.0.0.1:${runtimePort}`;
  endpointUrl = `http://127.0.0.1:${endpointPort}`;
  // The function types' descriptors: what `shoal serve` knows of the bank, with none of its code.
  execFileSync(
    join(repoRoot, "node_modules/.bin/buf"),
    ["build", "--path", "examples/bank/proto/bank/v1/account.proto", "-o", join(dir, "bank.binpb")],
    {
      cwd: repoRoot,
    },
  );
  writeConfig({ endpointAttempts: 10, runtimeAttempts: 3 });
  await startRuntime();
}, 120_000);

afterAll(async () => {
  await stop(endpoint);
  await stop(runtime);
  rmSync(dir, { recursive: true, force: true });
});

describe("shoal serve with the bank in a remote endpoint process", { timeout: 120_000 }, () => {
  it("retries while the endpoint refuses connections, and runs the message once, when it listens", async () => {
    const pending = deposit("refused", 5, "r1");
    // The runtime tried and was refused before the endpoint existed.
    while (faultLines("unavailable").length === 0) await new Promise((resolve) => setTimeout(resolve, 50));
    expect(faultLines("unavailable")[0]).toMatch(
      new RegExp(
        `^remote function endpoint ${endpointUrl}: Invoke of 1 message\\(s\\) for bank.v1.Account/refused failed \\(unavailable\\): .*ECONNREFUSED.*; nothing of it was committed, sending it again in \\d+ ms`,
      ),
    );
    await startEndpoint("none");
    expect(await pending).toEqual({ status: 200, body: { balance: "5" } });
    expect(await remoteErrors("unavailable")).toBeGreaterThanOrEqual(1);
    expect(await account("refused")).toEqual({ balance: 5, transfers: ["r1"] });
  });

  it.each([
    ["hangs", "hang", "timeout", 1, "no answer within 3000 ms (timeoutMs)"],
    ["answers garbage", "garbage", "garbage", 2, "the answer is no valid InvokeResponse"],
    ["answers effects for another instance", "wrong-instance", "wrong_instance", 2, "the invoker answered for instance bank.v1.Account/"],
    [
      "answers another protocol version",
      "version",
      "protocol_version",
      2,
      "the endpoint sent protocol version 99, this runtime speaks version 1",
    ],
  ] as const)(
    "an endpoint that %s: logged and counted per request, retried, and the deposit applied once",
    async (_, fault, reason, times, text) => {
      await stop(endpoint);
      const ep = await startEndpoint(fault, times);
      const name = `acct-${fault}`;
      const before = await remoteErrors(reason);
      expect(await deposit(name, 7, `${fault}-1`)).toEqual({ status: 200, body: { balance: "7" } });
      expect(await deposit(name, 3, `${fault}-2`)).toEqual({ status: 200, body: { balance: "10" } });
      // A client's retry of an applied deposit gets the first reply and applies nothing.
      expect(await deposit(name, 7, `${fault}-1`)).toEqual({ status: 200, body: { balance: "7" } });
      expect(ep.stdout().match(new RegExp(`^fault ${fault}$`, "gm"))).toHaveLength(times);
      expect((await remoteErrors(reason)) - before).toBe(times);
      const lines = faultLines(reason).filter((l) => l.includes(`bank.v1.Account/${name} `));
      expect(lines).toHaveLength(times);
      for (const line of lines) {
        expect(line).toContain(
          `remote function endpoint ${endpointUrl}: Invoke of 1 message(s) for bank.v1.Account/${name} failed (${reason}): `,
        );
        expect(line).toContain(text);
      }
      expect(await account(name)).toEqual({ balance: 10, transfers: [`${fault}-1`, `${fault}-2`] });
    },
  );

  it("an endpoint that crashes in the middle of a batch (SIGKILL): the batch is sent again to its successor, each deposit applied once", async () => {
    await stop(endpoint);
    const ep = await startEndpoint("crash-batch", 1);
    // Many deposits to one account at once: while one runs, the others queue and go as a batch.
    const amounts = [1, 2, 3, 4, 5, 6, 7, 8];
    const pending = amounts.map((amount) => deposit("batch", amount, `b${amount}`));
    expect(await ep.exited).toBe("SIGKILL");
    expect(ep.stdout()).toContain("fault crash-batch");
    await startEndpoint("none");
    const replies = await Promise.all(pending);
    expect(replies.map((r) => r.status)).toEqual(amounts.map(() => 200));
    const state = await account("batch");
    expect(state.balance).toBe(36);
    expect([...state.transfers].sort()).toEqual(amounts.map((a) => `b${a}`).sort());
    expect(await remoteErrors("unavailable")).toBeGreaterThanOrEqual(2);
    // Answers for batches came back: more messages than answers.
    const batched = `{endpoint="${endpointUrl}"}`;
    expect(await metric(`shoal_remote_invoke_batch_messages_sum${batched}`)).toBeGreaterThan(
      await metric(`shoal_remote_invoke_batch_messages_count${batched}`),
    );
  });

  /** Deposits to `count` accounts at once, so that the runtime sends several instances' invocations in one InvokeMany. */
  async function depositsAtOnce(prefix: string, count: number) {
    const names = Array.from({ length: count }, (_, i) => `${prefix}-${i}`);
    const replies = await Promise.all(names.map((name, i) => deposit(name, i + 1, `${name}-t`)));
    expect(replies).toEqual(names.map((_, i) => ({ status: 200, body: { balance: String(i + 1) } })));
    for (const [i, name] of names.entries()) expect(await account(name)).toEqual({ balance: i + 1, transfers: [`${name}-t`] });
  }

  it.each([
    ["leaves a result out", "many-count", "garbage", "the InvokeMany answer holds "],
    ["answers the results out of order", "many-order", "wrong_instance", "the invoker answered for instance bank.v1.Account/"],
  ] as const)(
    "an endpoint that %s of an InvokeMany: each invocation of it is logged, counted and sent again; each deposit applies once",
    async (_, fault, reason, text) => {
      await stop(endpoint);
      const ep = await startEndpoint(fault, 1);
      const before = await remoteErrors(reason);
      await depositsAtOnce(fault, 16);
      expect(ep.stdout().match(new RegExp(`^fault ${fault}$`, "gm"))).toHaveLength(1);
      const lines = faultLines(reason).filter((l) => l.includes(`bank.v1.Account/${fault}-`));
      // All of the request's invocations (the middle one of an odd count reversed is its own).
      expect(lines.length).toBeGreaterThanOrEqual(fault === "many-count" ? 2 : 1);
      expect((await remoteErrors(reason)) - before).toBe(lines.length);
      for (const line of lines) {
        expect(line).toMatch(
          new RegExp(
            `^remote function endpoint ${endpointUrl}: Invoke of 1 message\\(s\\) for bank.v1.Account/${fault}-\\d+ failed \\(${reason}\\): `,
          ),
        );
        expect(line).toContain(text);
      }
    },
  );

  it("an endpoint that does not serve InvokeMany (an older SDK, 404): the runtime sends Invoke instead, from then on, and each deposit applies once", async () => {
    await stop(endpoint);
    const ep = await startEndpoint("invoke-only");
    await depositsAtOnce("older", 16);
    const refused = ep.stdout().match(/^fault invoke-only$/gm)?.length ?? 0;
    expect(refused).toBeGreaterThanOrEqual(1);
    // Remembered: no InvokeMany is sent to it again.
    await depositsAtOnce("older-again", 16);
    expect(ep.stdout().match(/^fault invoke-only$/gm)).toHaveLength(refused);
    expect(faultLines("unimplemented")).toEqual([]);
  });

  it("sends no InvokeMany to an endpoint whose entry says invokeMany.maxRequests: 1", async () => {
    await stop(endpoint);
    await stop(runtime);
    writeConfig({ endpointAttempts: 3, runtimeAttempts: 3 }, "      invokeMany: { maxRequests: 1 }\n");
    await startRuntime();
    // It refuses InvokeMany (and says so on stdout each time): none is sent, so none is refused.
    const ep = await startEndpoint("invoke-only");
    await depositsAtOnce("alone", 16);
    expect(ep.stdout().match(/^fault invoke-only$/gm)).toBeNull();
    expect(faultLines("unimplemented")).toEqual([]);
  });

  it("fails the invocation with an error naming the endpoint when every attempt is answered with garbage; nothing commits", async () => {
    await stop(endpoint);
    await stop(runtime);
    writeConfig({ endpointAttempts: 2, runtimeAttempts: 1 });
    await startRuntime();
    await startEndpoint("garbage");
    const failed = await deposit("doomed", 9, "d1");
    expect(failed.status).toBe(500);
    expect(failed.body.message).toMatch(
      new RegExp(
        `remote function endpoint ${endpointUrl}: Invoke of 1 message\\(s\\) for bank.v1.Account/doomed failed 2 time\\(s\\), last \\(garbage\\): the answer is no valid InvokeResponse`,
      ),
    );
    expect(await remoteErrors("garbage")).toBe(2);
    // What was committed before the restart is all there.
    await stop(endpoint);
    await startEndpoint("none");
    expect(await account("doomed")).toEqual({ balance: 0, transfers: [] });
    expect(await account("batch")).toMatchObject({ balance: 36 });
    expect(await account("acct-garbage")).toEqual({ balance: 10, transfers: ["garbage-1", "garbage-2"] });
  });
});

describe("shoal serve with the bank in a remote endpoint over TLS", { timeout: 120_000 }, () => {
  it("trusts the endpoint through the configured CA, presents its client certificate (mTLS) and the bearer token; without either it is refused", async () => {
    await stop(endpoint);
    await stop(runtime);
    const certs = makeTestCertificates(dir);
    endpointUrl = `https://127.0.0.1:${endpointPort}`;
    // The bank example's own endpoint (npm run serve-functions), as a user runs it.
    endpoint = start(process.execPath, [bankEndpoint, "--port", String(endpointPort), "--host", "127.0.0.1"], {
      env: { SHOAL_TLS_CERT: certs.serverCert, SHOAL_TLS_KEY: certs.serverKey, SHOAL_TLS_CA: certs.ca, SHOAL_BEARER_TOKEN: "s3cret" },
    });
    await endpoint.waitFor(new RegExp(`serving shoal.v1.FunctionService for bank.v1.Account at ${endpointUrl}`), 60_000);
    const once = { endpointAttempts: 1, runtimeAttempts: 1 };
    const tls = `      tls: { ca: ${certs.ca}, cert: ${certs.clientCert}, key: ${certs.clientKey} }\n      bearerTokenEnv: BANK_TOKEN\n`;
    writeConfig(once, tls);
    await startRuntime({ BANK_TOKEN: "s3cret" });
    expect(await deposit("tls", 4, "tls-1")).toEqual({ status: 200, body: { balance: "4" } });

    // No client certificate: the endpoint refuses the TLS handshake.
    await stop(runtime);
    writeConfig(once, `      tls: { ca: ${certs.ca} }\n      bearerTokenEnv: BANK_TOKEN\n`);
    await startRuntime({ BANK_TOKEN: "s3cret" });
    const noCert = await deposit("tls", 5, "tls-2");
    expect(noCert.status).toBe(500);
    expect(noCert.body.message).toContain(
      `remote function endpoint ${endpointUrl}: Invoke of 1 message(s) for bank.v1.Account/tls failed 1 time(s)`,
    );
    expect(noCert.body.message).toContain("last (tls): the TLS connection failed (ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED)");
    expect(await remoteErrors("tls")).toBe(1);
    expect(faultLines("tls")).toHaveLength(1);

    // Another token: the endpoint answers Unauthenticated.
    await stop(runtime);
    writeConfig(once, tls);
    await startRuntime({ BANK_TOKEN: "guess" });
    const wrongToken = await deposit("tls", 6, "tls-3");
    expect(wrongToken.status).toBe(500);
    expect(wrongToken.body.message).toContain("last (unauthenticated)");
    expect(await remoteErrors("unauthenticated")).toBe(1);
    expect(faultLines("unauthenticated")).toHaveLength(1);

    await stop(runtime);
    writeConfig(once, tls);
    await startRuntime({ BANK_TOKEN: "s3cret" });
    expect(await account("tls")).toEqual({ balance: 4, transfers: ["tls-1"] });
  });
});
