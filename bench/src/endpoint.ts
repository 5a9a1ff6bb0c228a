// The function endpoint of the `shoal-remote` server: the counter's handlers
// served by `listenFunctions` (HTTP/2 without TLS, as the runtime speaks it)
// in a process of its own. The shoal-remote server forks it, reads its URL
// from the first line of stdout and asks it for its CPU time and RSS over
// the IPC channel; it exits when that channel closes.
import { implement, module } from "@shoal/sdk";
import { listenFunctions } from "@shoal/sdk/serve";
import { counter } from "./counter.js";
import { CounterFunction } from "./gen/bench/v1/counter_shoal.js";
import type { EndpointReport } from "./protocol.js";

const server = await listenFunctions(module(implement(CounterFunction, counter)), {
  port: 0,
  host: "127.0.0.1",
});
process.on("message", (message: { id: number }) => {
  process.send?.({ id: message.id, cpu: process.cpuUsage(), rss: process.memoryUsage.rss() } satisfies EndpointReport);
});
process.on("disconnect", () => void server.close().then(() => process.exit(0)));
console.log(server.url);
