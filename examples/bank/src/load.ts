// A load client for the bank: concurrent random transfers between accounts,
// each retried with its idempotency key until the runtime answers. It runs
// until SIGTERM, then finishes the transfers in flight and prints a summary
// as one JSON line. Used by the crash test and the storms; usable by hand:
//   node examples/bank/dist/load.js http://127.0.0.1:8080 --accounts 10 --workers 16
// --settle-ms bounds how long a transfer is still retried after SIGTERM (the
// storms send it once the fault is gone): one still unanswered then is
// abandoned with the last error it saw. --seed makes accounts and amounts repeatable.
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
const settleMs = option("settle-ms", 120_000);
// mulberry32: a small seeded generator, so a storm's seed also fixes the transfers.
let seed = option("seed", Math.floor(Math.random() * 2 ** 32)) >>> 0;
const random = () => {
  seed = (seed + 0x6d2b79f5) >>> 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
};

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
const abandoned: Array<Transfer & { lastError: string }> = [];
let retries = 0;
/** How often each retried error was seen, by code: what the runtime answered while faults lasted. */
const retriedCodes: Record<string, number> = {};
let stopping = false;
let stoppedAt = Number.POSITIVE_INFINITY;
let started = 0;
process.once("SIGTERM", () => {
  stopping = true;
  stoppedAt = Date.now();
});

// Handler answers that end a transfer for good; anything else (connection
// refused or reset while the runtime restarts, Unavailable) is retried.
const terminal = new Set([Code.FailedPrecondition, Code.InvalidArgument]);

async function withRetries<T>(run: () => Promise<T>): Promise<{ ok: T } | { error: ConnectError } | { gaveUp: ConnectError }> {
  const deadline = Date.now() + 120_000;
  for (;;) {
    try {
      return { ok: await run() };
    } catch (err) {
      const e = ConnectError.from(err);
      if (terminal.has(e.code)) return { error: e };
      if (Date.now() > Math.min(deadline, stoppedAt + settleMs)) return { gaveUp: e };
      retries++;
      retriedCodes[Code[e.code]] = (retriedCodes[Code[e.code]] ?? 0) + 1;
      await new Promise((resolve) => setTimeout(resolve, 20 + random() * 80));
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
    const from = Math.floor(random() * accounts);
    let to = Math.floor(random() * (accounts - 1));
    if (to >= from) to++;
    const transfer: Transfer = {
      id: `t-${process.pid}-${w}-${n}`,
      from: accountName(from),
      to: accountName(to),
      amount: String(1 + Math.floor(random() * 50)),
    };
    const result = await withRetries(() =>
      client.transfer(
        { account: transfer.from, to: transfer.to, amount: BigInt(transfer.amount), transferId: transfer.id },
        { idempotencyKey: transfer.id, timeoutMs: 10_000 },
      ),
    );
    if ("ok" in result) acknowledged.push(transfer);
    else if ("error" in result) refused.push({ ...transfer, code: Code[result.error.code], message: result.error.rawMessage });
    else abandoned.push({ ...transfer, lastError: `${Code[result.gaveUp.code]}: ${result.gaveUp.rawMessage}` });
  }
}

await Promise.all(Array.from({ length: workers }, (_, w) => worker(w)));
process.stdout.write(`${JSON.stringify({ summary: { acknowledged, refused, abandoned, retries, retriedCodes } })}\n`);
