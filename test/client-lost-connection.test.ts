// DESIGN §7: a transient condition stays transient. A request whose
// connection the runtime cut (it crashed, or stopped and closed a keep-alive
// connection just as the request went out on it) must reach a Shoal client as
// Unavailable, the code clients retry, not as connect-node's Internal (EPIPE)
// or Aborted (ECONNRESET). The storms saw both (test/storm/bank-storm.ts).
import { readFileSync } from "node:fs";
import { Code, ConnectError } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterEach, expect, it } from "vitest";
import { createAccountClient } from "../examples/bank/src/gen/bank/v1/account_shoal.js";
import { type Child, freePort, repoRoot, shoalBin, start } from "./support/processes.js";

const children: Child[] = [];
afterEach(() => {
  for (const child of children.splice(0)) child.process.kill("SIGKILL");
});

/** `shoal dev` on the bank whose transfer "t1" hangs once its deposit returned (test/support/interrupted-bank.ts). */
async function startBank(): Promise<{ child: Child; url: string }> {
  const port = await freePort();
  const child = start(
    process.execPath,
    [shoalBin, "dev", `${repoRoot}test/support/interrupted-bank.ts`, "--port", String(port), "--memory", "--log-level", "error"],
    { env: { SHOAL_TEST_PHASE: "hang" } },
  );
  children.push(child);
  await child.waitFor(/serving .* at http/);
  return { child, url: `http://127.0.0.1:${port}` };
}

const errorOf = (err: unknown) => ConnectError.from(err);

for (const httpVersion of ["1.1", "2"] as const) {
  it(`a reply cut off by a SIGKILL of the runtime is Unavailable (HTTP/${httpVersion})`, { timeout: 60_000 }, async () => {
    const { child, url } = await startBank();
    const client = createAccountClient(createConnectTransport({ baseUrl: url, httpVersion }));
    await client.deposit({ account: "x", amount: 100n });
    const cut = client.transfer({ account: "x", to: "y", amount: 30n, transferId: "t1" }, { idempotencyKey: "t1" }).catch(errorOf);
    await child.waitFor(/deposited t1/);
    child.process.kill("SIGKILL");
    await child.exited;

    const err = await cut;
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code, (err as ConnectError).message).toBe(Code.Unavailable);
    expect((err as ConnectError).rawMessage).toMatch(/connection to the runtime broke before its answer.*same Idempotency-Key/);
  });
}

it("a request sent on a keep-alive connection of a runtime that died meanwhile is Unavailable", { timeout: 60_000 }, async () => {
  const { child, url } = await startBank();
  // HTTP/1.1 keeps the connection of the first request for the next one.
  const client = createAccountClient(createConnectTransport({ baseUrl: url, httpVersion: "1.1" }));
  await client.deposit({ account: "x", amount: 100n });
  const pid = child.process.pid as number;
  child.process.kill("SIGKILL");
  // Without returning to the event loop, so that the client has not yet read
  // the end of the connection the dead runtime left in its pool: the race of
  // the storms, where a client picked such a connection just as it closed.
  const pause = new Int32Array(new SharedArrayBuffer(4));
  while (!/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8"))) Atomics.wait(pause, 0, 0, 5);
  const err = await client.deposit({ account: "x", amount: 1n }).catch(errorOf);

  expect(err).toBeInstanceOf(ConnectError);
  expect((err as ConnectError).code, (err as ConnectError).message).toBe(Code.Unavailable);
  expect((err as ConnectError).rawMessage).toMatch(/connection to the runtime broke before its answer/);
});
