// A client that resets its connection before sending a byte must not take the
// node down: a real `shoal dev` process, a raw socket, an RST.
import { connect } from "node:net";
import { afterAll, expect, it } from "vitest";
import { type Child, repoRoot, startShoalDev } from "./support/processes.js";

let child: Child | undefined;
afterAll(() => {
  child?.process.kill("SIGKILL");
});

it("keeps serving after a client resets its connection before sending anything", async () => {
  const dev = await startShoalDev(`${repoRoot}examples/greeter/dist/module.js`, ["--port", "0", "--memory", "--log-level", "error"]);
  child = dev.child;
  const socket = connect(Number(new URL(dev.url).port), "127.0.0.1");
  socket.on("error", () => {});
  socket.once("connect", () => socket.resetAndDestroy());
  await new Promise((resolve) => socket.once("close", resolve));

  const res = await fetch(`${dev.url}/greeter.v1.Greeter/Greet`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name: "ada" }),
  });
  expect(await res.json()).toMatchObject({ greeting: "Hello, ada!" });
  expect(child.stderr()).toBe("");
});
