// `npm start`: the shopping-cart functions on the embedded runtime with the
// local durable store, a first request through the typed client, and curl
// lines to try.
import { createConnectTransport } from "@connectrpc/connect-node";
import { startNode, validateConfig } from "@shoal/runtime";
import { createCartClient } from "./gen/shop/v1/cart_shoal.js";
import { createInventoryClient } from "./gen/shop/v1/inventory_shoal.js";
import shop from "./module.js";

const port = Number(process.env.PORT ?? 8080);
const directory = process.env.SHOAL_DATA_DIR ?? ".shoal/shopping-cart";
const node = await startNode(
  validateConfig({
    ingress: { port },
    storage: { backend: "local", directory },
    egress: { orders: { type: "stdout" } },
    log: { level: "warn" },
  }),
  shop,
).catch((err: NodeJS.ErrnoException) => {
  const reason =
    err.code === "EADDRINUSE" ? `port ${port} is in use; run with PORT=<another port> npm start` : `${err.name}: ${err.message}`;
  process.stderr.write(`shopping-cart demo: ${reason}\n`);
  process.exit(1);
});
const url = node.server.url;
const transport = createConnectTransport({ baseUrl: url, httpVersion: "1.1" });
// The idempotency key makes the seeding happen once, however often the demo restarts.
const stock = await createInventoryClient(transport).restock({ sku: "socks", quantity: 100 }, { idempotencyKey: "demo-seed-socks" });
const cart = await createCartClient(transport).addItem({ userId: "demo", sku: "socks", quantity: 1 });

process.stdout.write(`Shoal shopping-cart demo at ${url} (state in ${directory})
inventory: ${stock.available} socks after seeding; the cart of "demo" holds ${JSON.stringify(cart.items)}

Try:
  curl -s ${url}/shop.v1.Cart/AddItem -H 'content-type: application/json' -d '{"userId":"joe","sku":"socks","quantity":2}'
  curl -s ${url}/shop.v1.Cart/View -H 'content-type: application/json' -d '{"userId":"joe"}'
  curl -s ${url}/shop.v1.Cart/Checkout -H 'content-type: application/json' -d '{"userId":"joe"}'
  curl -s ${url}/shop.v1.Inventory/Level -H 'content-type: application/json' -d '{"sku":"socks"}'
Ctrl-C stops it; state survives restarts.
`);

const stop = async () => {
  await node.close();
  process.exit(0);
};
process.once("SIGINT", stop);
process.once("SIGTERM", stop);
