// No single message takes a node down (DESIGN §7): a message whose result
// cannot be encoded fails on its own with a clear error, ends as a durable dead
// letter that the CLI lists, and is not run again after a crash. The bank runs
// as a real `shoal dev` process on the local store and is SIGKILLed.
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { Code, ConnectError, createRouterTransport } from "@connectrpc/connect";
import { createMemoryStorage, createRuntime } from "@shoal/runtime";
import { implement } from "@shoal/sdk";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createGreeterClient, GreeterFunction } from "../examples/greeter/src/gen/greeter/v1/greeter_shoal.js";
import { greeter } from "../examples/greeter/src/greeter.js";
import { type Child, freePort, repoRoot, shoalBin, start, startShoalDev } from "./support/processes.js";

const run = promisify(execFile);
const bankModule = `${repoRoot}examples/bank/dist/module.js`;
const maxInt64 = "9223372036854775807";
// What the process guard (installed by `shoal dev`) logs: it must never fire on this path.
const guardLine = "an error escaped every handler";

describe("the bank under `shoal dev`", () => {
  const dataDir = mkdtempSync(join(tmpdir(), "shoal-poison-"));
  let node: Child | undefined;
  let url = "";
  let args: string[] = [];

  beforeAll(async () => {
    await startBank();
  });
  afterAll(() => {
    node?.process.kill("SIGKILL");
    rmSync(dataDir, { recursive: true, force: true });
  });

  async function startBank() {
    if (args.length === 0) args = ["--port", String(await freePort()), "--data-dir", dataDir, "--shards", "4", "--log-level", "error"];
    const started = await startShoalDev(bankModule, args);
    node = started.child;
    url = started.url;
    return started.child;
  }

  const call = async (rpc: string, body: object, headers: Record<string, string> = {}) => {
    const res = await fetch(`${url}/bank.v1.Account/${rpc}`, {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body: JSON.stringify(body),
    });
    return { status: res.status, headers: res.headers, json: (await res.json()) as Record<string, string> };
  };

  const deadLetters = async () => (await run(process.execPath, [shoalBin, "dead-letters", "list", "--url", url])).stdout;

  it("answers two Deposits that overflow the balance with a clear error, stays up and serves other accounts", async () => {
    const child = node as Child;
    let exited = false;
    void child.exited.then(() => {
      exited = true;
    });
    expect(await call("Deposit", { account: "rich", amount: maxInt64 })).toMatchObject({ status: 200, json: { balance: maxInt64 } });
    const overflow = await call("Deposit", { account: "rich", amount: "1" });
    expect(overflow.status).toBe(500);
    expect(overflow.json.code).toBe("internal");
    expect(overflow.json.message).toContain('bank.v1.Account.Deposit (key "rich")');
    expect(overflow.json.message).toContain("the new state cannot be encoded as a bank.v1.AccountState");
    expect(overflow.json.message).toContain("bank.v1.AccountState.balance");

    expect(await call("Deposit", { account: "modest", amount: "5" })).toMatchObject({ status: 200, json: { balance: "5" } });
    expect(await call("Get", { account: "rich" })).toMatchObject({ status: 200, json: { balance: maxInt64 } });
    expect(exited).toBe(false);
    expect(child.stderr()).not.toContain(guardLine);
  });

  it("refuses a request, a one-way send and a transfer to an account key too long to store; every shard serves on", async () => {
    const child = node as Child;
    const tooLong = "k".repeat(2000);
    const limit = "bank.v1.Account keys may be at most 987 bytes";
    for (const headers of [{}, { "shoal-send": "1" }] as Record<string, string>[]) {
      const refused = await call("Deposit", { account: tooLong, amount: "5" }, headers);
      expect(refused.status).toBe(400);
      expect(refused.json.code).toBe("invalid_argument");
      expect(refused.json.message).toContain(`is 2000 bytes (UTF-8); ${limit}`);
    }
    expect(await call("Deposit", { account: "payer", amount: "10" })).toMatchObject({ status: 200, json: { balance: "10" } });
    const transfer = await call("Transfer", { account: "payer", to: tooLong, amount: "4", transferId: "t-long" });
    expect(transfer.status).toBe(400);
    expect(transfer.json.message).toContain(`ctx.call: the key of bank.v1.Account instance`);
    expect(await call("Get", { account: "payer" })).toMatchObject({ status: 200, json: { balance: "10" } });
    const status = JSON.parse((await run(process.execPath, [shoalBin, "status", "--url", url, "--json"])).stdout) as unknown;
    expect(JSON.stringify(status)).not.toContain('"failed"');
    expect(child.stderr()).not.toContain(guardLine);
  });

  it("dead-letters a poison one-way send durably: the CLI lists it, and after SIGKILL and restart it is not run again", async () => {
    expect(await call("Deposit", { account: "sink", amount: maxInt64 })).toMatchObject({ status: 200 });
    const sent = await call("Deposit", { account: "sink", amount: "1" }, { "shoal-send": "1" });
    expect(sent.status).toBe(200);
    const messageId = sent.headers.get("shoal-message-id") ?? "";
    expect(messageId).not.toBe("");

    await expect.poll(deadLetters, { timeout: 10_000 }).toContain(messageId);
    const line = (await deadLetters()).split("\n").find((l) => l.includes(messageId)) ?? "";
    expect(line).toContain('bank.v1.Account/"sink".Deposit');
    expect(line).toContain("internal: bank.v1.Account.Deposit");
    expect(line).toContain('{"account":"sink","amount":"1"}');
    const metrics = await (await fetch(`${url}/metrics`)).text();
    expect(metrics).toMatch(/^shoal_dead_letters_total\{function="bank\.v1\.Account",handler="Deposit"\} [1-9]\d*$/m);
    const first = node as Child;
    expect(first.stderr()).toContain(`message ${messageId} dead-lettered`);
    expect(first.stderr()).not.toContain(guardLine);

    first.process.kill("SIGKILL");
    await first.exited;
    const restarted = await startBank();
    // Exclusive handlers of one instance run in arrival order, after anything pending since before the crash.
    expect(await call("Withdraw", { account: "sink", amount: "1" })).toMatchObject({
      status: 200,
      json: { balance: "9223372036854775806" },
    });
    expect(await deadLetters()).toContain(messageId);
    expect(restarted.stderr()).not.toContain(messageId);
    expect(await (await fetch(`${url}/metrics`)).text()).not.toMatch(/^shoal_dead_letters_total\{/m);
    const status = (await run(process.execPath, [shoalBin, "status", "--url", url])).stdout;
    expect(status).toContain("pending 0");
  });
});

describe("in process", () => {
  it("fails an invocation whose effects cannot be committed on its own and dead-letters it; the shard keeps serving", async () => {
    const runtime = createRuntime({
      functions: [
        implement(GreeterFunction, {
          ...greeter,
          greet(req, ctx) {
            // A delay past int64 milliseconds: the outbox entry cannot be encoded.
            if (req.name === "forever") ctx.send(GreeterFunction, { delay: 1e30 }).greet({ name: "later" });
            return greeter.greet(req, ctx);
          },
        }),
      ],
      storage: createMemoryStorage(),
      shards: 1,
      logger: "silent",
    });
    await runtime.start();
    try {
      const greeterClient = createGreeterClient(createRouterTransport(runtime.routes));
      const err = await greeterClient.greet({ name: "forever" }).catch((e) => ConnectError.from(e));
      expect(err).toBeInstanceOf(ConnectError);
      expect((err as ConnectError).code).toBe(Code.Internal);
      expect((err as ConnectError).rawMessage).toContain('greeter.v1.Greeter.Greet (key "forever"): its effects cannot be committed');
      // Its state write was dropped with the rest of its effects.
      expect(runtime.stateOf(GreeterFunction, "forever")).toBeUndefined();
      expect(await greeterClient.greet({ name: "forever2" })).toMatchObject({ times: 1 });
      expect(runtime.status().filter((s) => s.failed !== undefined)).toEqual([]);
      expect(runtime.deadLetters().map((d) => d.letter.target?.key)).toEqual(["forever"]);
    } finally {
      await runtime.close();
    }
  });
});

it("the process guard logs an unhandled rejection and an uncaught exception, and the process keeps serving", async () => {
  const script = `
    import { installProcessGuard } from ${JSON.stringify(`${repoRoot}packages/runtime/dist/index.js`)};
    const log = (message, fields) => process.stderr.write(message + " " + JSON.stringify(fields) + "\\n");
    installProcessGuard({ debug: log, info: log, warn: log, error: log });
    Promise.reject(new Error("a rejection nobody awaited"));
    setTimeout(() => { throw new Error("a callback that threw"); });
    setTimeout(() => console.log("still serving"), 100);
  `;
  const child = start(process.execPath, ["--input-type=module", "-e", script]);
  await child.waitFor(/still serving/);
  expect(await child.exited).toBe(0);
  expect(child.stderr()).toContain(`${guardLine}; the node keeps serving (unhandled rejection)`);
  expect(child.stderr()).toContain("a rejection nobody awaited");
  expect(child.stderr()).toContain(`${guardLine}; the node keeps serving (uncaught exception)`);
  expect(child.stderr()).toContain("a callback that threw");
});
