// A load client for the bank: concurrent random transfers between accounts,
// each retried with its idempotency key until the runtime answers. It runs
// until SIGTERM, then finishes the transfers in flight and prints a summary
// as one JSON line. Used by the crash test; usable by hand:
//   node examples/bank/dist/load.js http://127.0.0.1:8080 --accounts 10 --workers 16
import { Code, ConnectError } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { createAccountClient } from "./gen/bank/v1/account_shoal.js";

const args = process.argv.slice(2);
const baseUrl = args[0] ?? "http://127.0.0.1:8080";
const option = (name: string, fallback: number) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : fallback;
};
const accounts = option("accounts", 10);
const workers = option("workers", 16);
const initialBalance = BigInt(option("initial", 1000));
const maxTransfers = option("max", Number.POSITIVE_INFINITY);

const client = createAccountClient(createConnectTransport({ baseUrl, httpVersion: "1.1" }));
const accountName = (i: number) => `acct-${i}`;

interface Transfer {
  id: string;
  from: string;
  to: string;
  amount: string;
}
const acknowledged: Transfer[] = [];
const refused: Array<Transfer & { code: string; message: string }> = [];
const abandoned: Transfer[] = [];
let retries = 0;
let stopping = false;
let started = 0;
process.once("SIGTERM", () => {
  stopping = true;
});

// Handler answers that end a transfer for good; anything else (connection
// refused or reset while the runtime restarts, Unavailable) is retried.
const terminal = new Set([Code.FailedPrecondition, Code.InvalidArgument]);

async function withRetries<T>(run: () => Promise<T>): Promise<{ ok: T } | { error: ConnectError } | { gaveUp: true }> {
  const deadline = Date.now() + 120_000;
  for (;;) {
    try {
      return { ok: await run() };
    } catch (err) {
      const e = ConnectError.from(err);
      if (terminal.has(e.code)) return { error: e };
      if (Date.now() > deadline) return { gaveUp: true };
      retries++;
      await new Promise((resolve) => setTimeout(resolve, 20 + Math.random() * 80));
    }
  }
}

for (let i = 0; i < accounts; i++) {
  const seeded = await withRetries(() =>
    client.deposit({ account: accountName(i), amount: initialBalance }, { idempotencyKey: `seed-${accountName(i)}` }),
  );
  if (!("ok" in seeded)) throw new Error(`seeding ${accountName(i)} failed`);
}
process.stdout.write(`${JSON.stringify({ seeded: accounts })}\n`);

async function worker(w: number) {
  for (let n = 0; !stopping && started < maxTransfers; n++) {
    started++;
    const from = Math.floor(Math.random() * accounts);
    let to = Math.floor(Math.random() * (accounts - 1));
    if (to >= from) to++;
    const transfer: Transfer = {
      id: `t-${process.pid}-${w}-${n}`,
      from: accountName(from),
      to: accountName(to),
      amount: String(1 + Math.floor(Math.random() * 50)),
    };
    const result = await withRetries(() =>
      client.transfer(
        { account: transfer.from, to: transfer.to, amount: BigInt(transfer.amount), transferId: transfer.id },
        { idempotencyKey: transfer.id, timeoutMs: 10_000 },
      ),
    );
    if ("ok" in result) acknowledged.push(transfer);
    else if ("error" in result) refused.push({ ...transfer, code: Code[result.error.code], message: result.error.rawMessage });
    else abandoned.push(transfer);
  }
}

await Promise.all(Array.from({ length: workers }, (_, w) => worker(w)));
process.stdout.write(`${JSON.stringify({ summary: { acknowledged, refused, abandoned, retries } })}\n`);
