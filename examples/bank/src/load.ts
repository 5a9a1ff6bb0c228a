// A load client for the bank: concurrent random transfers between accounts,
// each retried with its idempotency key until the runtime answers. It runs
// until SIGTERM, then finishes the transfers in flight and prints a summary
// as one JSON line. Used by the crash test and the storms; usable by hand:
//   node examples/bank/dist/load.js http://127.0.0.1:8080 --accounts 10 --workers 16
// Several ingresses, comma-separated (a cluster's nodes), take the requests
// round-robin, and a retry goes to the next one, so a dead node costs a retry.
// --settle-ms bounds how long a transfer is still retried after SIGTERM (the
// storms send it once the fault is gone): one still unanswered then is
// abandoned with the last error it saw. --seed makes accounts and amounts repeatable.
// --acyclic starts no transfer into an account that has one going out, nor out
// of one that has one coming in, so the calls in flight never form a cycle: a
// cluster does not detect two instances on different nodes calling each other
// at the same moment (README, "Order and concurrency"), and both would stay locked.
// An answer that is neither retryable nor one of the handler's refusals (an
// `Internal` while the runtime stops, say) is printed as a `nonRetryable` line
// with where it came from, and listed in the summary: the storms fail on it.
import { AsyncLocalStorage } from "node:async_hooks";
import { Code, ConnectError } from "@connectrpc/connect";
import { createTransport } from "@connectrpc/connect/protocol-connect";
import { compressionGzip, createNodeHttpClient } from "@connectrpc/connect-node";
import { createAccountClient } from "./gen/bank/v1/account_shoal.js";

const args = process.argv.slice(2);
const baseUrls = (args[0] ?? "http://127.0.0.1:8080").split(",");
const option = (name: string, fallback: number) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : fallback;
};
const accounts = option("accounts", 10);
const workers = option("workers", 16);
const initialBalance = BigInt(option("initial", 1000));
const maxTransfers = option("max", Number.POSITIVE_INFINITY);
const settleMs = option("settle-ms", 120_000);
const acyclic = args.includes("--acyclic");
// mulberry32: a small seeded generator, so a storm's seed also fixes the transfers.
let seed = option("seed", Math.floor(Math.random() * 2 ** 32)) >>> 0;
const random = () => {
  seed = (seed + 0x6d2b79f5) >>> 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
};

/** What one attempt saw on the wire: the HTTP status, if a response came at all. */
const attempts = new AsyncLocalStorage<{ status?: number }>();
const http1 = createNodeHttpClient({ httpVersion: "1.1" });
// connect-node's createConnectTransport with its defaults, but with an HTTP
// client that notes the status, which a ConnectError does not carry.
const clients = baseUrls.map((baseUrl) =>
  createAccountClient(
    createTransport({
      baseUrl,
      httpClient: async (req) => {
        const res = await http1(req);
        const attempt = attempts.getStore();
        if (attempt !== undefined) attempt.status = res.status;
        return res;
      },
      useBinaryFormat: true,
      interceptors: [],
      acceptCompression: [compressionGzip],
      sendCompression: null,
      compressMinBytes: 1024,
      readMaxBytes: 0xffffffff,
      writeMaxBytes: 0xffffffff,
    }),
  ),
);
let nextClient = 0;
const client = () => clients[nextClient++ % clients.length] as (typeof clients)[number];
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
/** Answers that are neither retryable nor a handler's refusal, with where they came from. */
const nonRetryable: NonRetryable[] = [];
interface NonRetryable {
  code: string;
  message: string;
  /** The HTTP status of the answer; absent when no response arrived (the error is the client's own). */
  status?: number;
  /** The Node.js error codes in the error's cause chain (ECONNRESET: the connection was reset or closed). */
  nodeErrors: string[];
  /** The transfer (or seeding) it answered, and when. */
  request: string;
  time: string;
}
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
// What a client may retry by contract (DESIGN §7: a transient condition gets a
// retryable code): Unavailable, also for a connection the runtime cut
// (@shoal/sdk's client); DeadlineExceeded is the client's own timeout.
const retryable = new Set([Code.Unavailable, Code.DeadlineExceeded]);

function nodeErrorCodes(err: unknown): string[] {
  const codes: string[] = [];
  for (let e = err, depth = 0; e instanceof Error && depth < 10; e = e.cause, depth++) {
    const code = (e as NodeJS.ErrnoException).code;
    if (typeof code === "string") codes.push(code);
  }
  return codes;
}

async function withRetries<T>(
  name: string,
  run: () => Promise<T>,
): Promise<{ ok: T } | { error: ConnectError } | { gaveUp: ConnectError }> {
  const deadline = Date.now() + 120_000;
  for (;;) {
    const attempt: { status?: number } = {};
    try {
      return { ok: await attempts.run(attempt, run) };
    } catch (err) {
      const e = ConnectError.from(err);
      if (terminal.has(e.code)) return { error: e };
      if (!retryable.has(e.code)) {
        const seen: NonRetryable = {
          code: Code[e.code],
          message: e.rawMessage,
          nodeErrors: nodeErrorCodes(e.cause),
          request: name,
          time: new Date().toISOString(),
        };
        if (attempt.status !== undefined) seen.status = attempt.status;
        nonRetryable.push(seen);
        process.stdout.write(`${JSON.stringify({ nonRetryable: seen })}\n`);
      }
      if (Date.now() > Math.min(deadline, stoppedAt + settleMs)) return { gaveUp: e };
      retries++;
      retriedCodes[Code[e.code]] = (retriedCodes[Code[e.code]] ?? 0) + 1;
      await new Promise((resolve) => setTimeout(resolve, 20 + random() * 80));
    }
  }
}

for (let i = 0; i < accounts; i++) {
  const seeded = await withRetries(`seed ${accountName(i)}`, () =>
    client().deposit({ account: accountName(i), amount: initialBalance }, { idempotencyKey: `seed-${accountName(i)}` }),
  );
  if (!("ok" in seeded)) throw new Error(`seeding ${accountName(i)} failed`);
}
process.stdout.write(`${JSON.stringify({ seeded: accounts })}\n`);

// Transfers in flight out of and into each account, for --acyclic.
const sending = new Array<number>(accounts).fill(0);
const receiving = new Array<number>(accounts).fill(0);

/** Two different accounts, or undefined when --acyclic rules this pair out for now. */
function pickPair(): [number, number] | undefined {
  const from = Math.floor(random() * accounts);
  let to = Math.floor(random() * (accounts - 1));
  if (to >= from) to++;
  if (acyclic && ((receiving[from] ?? 0) > 0 || (sending[to] ?? 0) > 0)) return undefined;
  return [from, to];
}

async function worker(w: number) {
  for (let n = 0; !stopping && started < maxTransfers; n++) {
    let pair = pickPair();
    while (pair === undefined) {
      await new Promise((resolve) => setTimeout(resolve, 5));
      pair = pickPair();
    }
    const [from, to] = pair;
    if (stopping) break;
    started++;
    const transfer: Transfer = {
      id: `t-${process.pid}-${w}-${n}`,
      from: accountName(from),
      to: accountName(to),
      amount: String(1 + Math.floor(random() * 50)),
    };
    sending[from] = (sending[from] ?? 0) + 1;
    receiving[to] = (receiving[to] ?? 0) + 1;
    const result = await withRetries(transfer.id, () =>
      client().transfer(
        { account: transfer.from, to: transfer.to, amount: BigInt(transfer.amount), transferId: transfer.id },
        { idempotencyKey: transfer.id, timeoutMs: 10_000 },
      ),
    );
    sending[from] = (sending[from] ?? 1) - 1;
    receiving[to] = (receiving[to] ?? 1) - 1;
    if ("ok" in result) acknowledged.push(transfer);
    else if ("error" in result) refused.push({ ...transfer, code: Code[result.error.code], message: result.error.rawMessage });
    else abandoned.push({ ...transfer, lastError: `${Code[result.gaveUp.code]}: ${result.gaveUp.rawMessage}` });
  }
}

await Promise.all(Array.from({ length: workers }, (_, w) => worker(w)));
process.stdout.write(`${JSON.stringify({ summary: { acknowledged, refused, abandoned, retries, retriedCodes, nonRetryable } })}\n`);
