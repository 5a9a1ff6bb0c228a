// The crash test of DESIGN §7: the bank runs as a separate runtime process on
// the local durable store, a separate client process transfers money between
// accounts with idempotency keys and retries, and the runtime is SIGKILLed at
// random moments and restarted. In the end no money is created or lost and
// every acknowledged transfer is applied exactly once on both accounts.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, expect, it } from "vitest";
import { type Child, freePort, repoRoot, start, startShoalDev } from "./support/processes.js";

const kills = Number(process.env.SHOAL_CRASH_KILLS ?? 20);
const accounts = 8;
const initial = 1000;
const dataDir = mkdtempSync(join(tmpdir(), "shoal-crash-"));
const bankModule = `${repoRoot}examples/bank/dist/module.js`;
const loadClient = `${repoRoot}examples/bank/dist/load.js`;
let runtime: Child | undefined;

afterAll(() => {
  runtime?.process.kill("SIGKILL");
  rmSync(dataDir, { recursive: true, force: true });
});

interface Transfer {
  id: string;
  from: string;
  to: string;
  amount: string;
}

it(`keeps every transfer exactly once across ${kills} SIGKILLs`, { timeout: 300_000 }, async () => {
  const port = await freePort();
  const args = ["--port", String(port), "--data-dir", dataDir, "--shards", "8", "--log-level", "error"];
  runtime = (await startShoalDev(bankModule, args)).child;
  const url = `http://127.0.0.1:${port}`;
  const client = start(process.execPath, [
    loadClient,
    url,
    "--accounts",
    String(accounts),
    "--workers",
    "12",
    "--initial",
    String(initial),
  ]);
  await client.waitFor(/"seeded"/, 60_000);

  let killed = 0;
  while (killed < kills) {
    await new Promise((resolve) => setTimeout(resolve, 150 + Math.random() * 450));
    runtime.process.kill("SIGKILL");
    await runtime.exited;
    killed++;
    runtime = (await startShoalDev(bankModule, args)).child;
  }
  // Let the client run against a healthy runtime for a moment, then drain.
  await new Promise((resolve) => setTimeout(resolve, 500));
  client.process.kill("SIGTERM");
  await client.exited;
  const summaryLine = client
    .stdout()
    .split("\n")
    .find((line) => line.startsWith('{"summary"'));
  if (summaryLine === undefined) throw new Error(`the load client printed no summary; stderr:\n${client.stderr()}`);
  const { acknowledged, refused, abandoned, retries } = JSON.parse(summaryLine).summary as {
    acknowledged: Transfer[];
    refused: Array<Transfer & { code: string; message: string }>;
    abandoned: Transfer[];
    retries: number;
  };

  // Read every account through the ingress.
  const ledgers = new Map<string, Array<{ transferId: string; amount: string }>>();
  let total = 0n;
  for (let i = 0; i < accounts; i++) {
    const res = await fetch(`${url}/bank.v1.Account/Get`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ account: `acct-${i}` }),
    });
    const view = (await res.json()) as { balance?: string; ledger?: Array<{ transferId: string; amount: string }> };
    total += BigInt(view.balance ?? "0");
    ledgers.set(`acct-${i}`, view.ledger ?? []);
  }
  const entries = (account: string, id: string) => (ledgers.get(account) ?? []).filter((e) => e.transferId === id);

  let applied = 0;
  for (const t of acknowledged) {
    expect(entries(t.from, t.id), `debit of ${t.id}`).toEqual([{ transferId: t.id, amount: `-${t.amount}` }]);
    expect(entries(t.to, t.id), `credit of ${t.id}`).toEqual([{ transferId: t.id, amount: t.amount }]);
    applied++;
  }
  for (const t of refused) {
    expect(entries(t.from, t.id), `refused ${t.id} (${t.message})`).toEqual([]);
    expect(entries(t.to, t.id)).toEqual([]);
  }
  const known = new Set([...acknowledged, ...refused, ...abandoned].map((t) => t.id));
  for (const [account, ledger] of ledgers) {
    const ids = ledger.map((e) => e.transferId);
    expect(new Set(ids).size, `no transfer twice in ${account}`).toBe(ids.length);
    for (const id of ids) expect(known.has(id), `${id} in ${account} was sent by the client`).toBe(true);
  }
  for (const t of abandoned) {
    // Never answered: applied on both accounts or on neither.
    expect(entries(t.from, t.id).length).toBe(entries(t.to, t.id).length);
  }
  expect(total).toBe(BigInt(accounts * initial));
  expect(acknowledged.length).toBeGreaterThan(0);

  process.stdout.write(
    `crash test: ${killed} kills, ${acknowledged.length} transfers acknowledged, ${retries} retries, ` +
      `${refused.length} refused (${summarize(refused)}), ${abandoned.length} abandoned, ${applied} applied exactly once on both accounts, ` +
      `total balance ${total} of ${accounts * initial}\n`,
  );
});

function summarize(refused: Array<{ code: string; message: string }>): string {
  const counts = new Map<string, number>();
  for (const r of refused) {
    const reason = r.message.startsWith("call cycle") ? "call cycle" : r.code === "FailedPrecondition" ? "insufficient funds" : r.code;
    counts.set(reason, (counts.get(reason) ?? 0) + 1);
  }
  return [...counts].map(([k, v]) => `${k}: ${v}`).join(", ") || "none";
}
