// The examples end to end: `shoal dev` as a runtime process, the generated
// clients in a separate process over real sockets, and every curl line of the
// examples' READMEs run by curl with its output checked against the README.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Child, repoRoot, shoalBin, start, startShoalDev } from "./support/processes.js";

const dataDir = mkdtempSync(join(tmpdir(), "shoal-e2e-"));
const children: Child[] = [];
afterAll(() => {
  for (const c of children) c.process.kill("SIGKILL");
  rmSync(dataDir, { recursive: true, force: true });
});

async function dev(example: string, dataName = example): Promise<string> {
  const { child, url } = await startShoalDev(`${repoRoot}examples/${example}/dist/module.js`, [
    "--port",
    "0",
    "--data-dir",
    join(dataDir, dataName),
    "--log-level",
    "error",
  ]);
  children.push(child);
  return url;
}

/** The README's curl lines, each with the output the README promises on the line after it. */
function readmeCurls(example: string): Array<{ command: string; expected: string | undefined }> {
  const lines = readFileSync(`${repoRoot}examples/${example}/README.md`, "utf8").split("\n");
  const out: Array<{ command: string; expected: string | undefined }> = [];
  lines.forEach((line, i) => {
    if (!line.startsWith("curl ")) return;
    const next = lines[i + 1] ?? "";
    out.push({ command: line, expected: next.startsWith("# ") ? next.slice(2) : undefined });
  });
  return out;
}

/** The README's expected output as a pattern: "…" stands for anything. */
function pattern(expected: string): RegExp {
  return new RegExp(
    `^${expected
      .split("…")
      .map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"))
      .join("[\\s\\S]*")}$`,
  );
}

describe.each(["greeter", "shopping-cart", "bank"])("examples/%s README", (example) => {
  let url: string;
  beforeAll(async () => {
    url = await dev(example);
  });

  it("has curl lines that work as written", () => {
    const curls = readmeCurls(example);
    expect(curls.length).toBeGreaterThan(0);
    for (const { command, expected } of curls) {
      const output = execFileSync("bash", ["-c", command.replaceAll("http://localhost:8080", url)], { encoding: "utf8" }).trim();
      if (expected === undefined) continue;
      const flat = output.replace(/\r?\n/g, " ");
      expect(flat, command).toMatch(pattern(expected));
    }
  });
});

describe("shopping cart over real sockets", () => {
  let url: string;
  beforeAll(async () => {
    url = await dev("shopping-cart", "shopping-cart-clients");
  }, 60_000);

  it.each(["connect-http1", "connect-h2c", "grpc-h2c"])("serves the generated client in another process (%s)", async (protocol) => {
    const client = start(process.execPath, [`${repoRoot}examples/shopping-cart/dist/client.js`, url, protocol]);
    children.push(client);
    expect(await client.exited, client.stderr()).toBe(0);
    const steps = Object.fromEntries(
      client
        .stdout()
        .trim()
        .split("\n")
        .map((line) => JSON.parse(line) as { step: string; value: unknown })
        .map(({ step, value }) => [step, value]),
    );
    expect(steps.add).toMatchObject({ items: { hat: 2 } });
    expect(steps["add-too-many"]).toMatchObject({ code: "FailedPrecondition" });
    expect(steps.view).toMatchObject({ items: { hat: 2 } });
    expect(steps.send).toEqual({ accepted: true });
    expect(steps.checkout).toMatchObject({ items: { hat: 3 } });
  });

  it("answers `shoal call` with JSON", () => {
    const out = execFileSync(process.execPath, [shoalBin, "call", "shop.v1.Inventory/Level", '{"sku":"hat"}', "--url", url], {
      encoding: "utf8",
    });
    expect(JSON.parse(out)).toMatchObject({ sku: "hat" });
  });
});
