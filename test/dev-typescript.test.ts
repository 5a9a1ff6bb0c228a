// `shoal dev` on a .ts module: tsx loads the handlers with their own copy of
// @shoal/sdk, and a ShoalError they throw must still be terminal.
import { afterAll, beforeAll, expect, it } from "vitest";
import { type Child, repoRoot, startShoalDev } from "./support/processes.js";

let child: Child | undefined;
let url: string;

beforeAll(async () => {
  ({ child, url } = await startShoalDev(`${repoRoot}examples/bank/src/module.ts`, ["--port", "0", "--memory", "--log-level", "error"]));
});
afterAll(() => {
  child?.process.kill("SIGKILL");
});

async function post(method: string, body: unknown): Promise<{ status: number; json: { code?: string; message?: string } }> {
  const res = await fetch(`${url}/bank.v1.Account/${method}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  return { status: res.status, json: (await res.json()) as { code?: string; message?: string } };
}

it("answers a ShoalError thrown by a .ts module with its own code, not Internal after retries", async () => {
  const negative = await post("Deposit", { account: "ts-1", amount: "-5" });
  expect(negative.json).toEqual({ code: "invalid_argument", message: "deposit needs a positive amount" });
  expect(negative.status).toBe(400);

  expect((await post("Deposit", { account: "ts-1", amount: "10" })).status).toBe(200);
  const overdraft = await post("Withdraw", { account: "ts-1", amount: "50" });
  expect(overdraft.json).toEqual({ code: "failed_precondition", message: "balance 10 is below 50" });
});
