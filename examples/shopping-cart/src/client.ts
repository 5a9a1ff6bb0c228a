// A separate client process for the end-to-end test: it calls a running
// runtime over a real socket with the generated clients and prints what it
// got as JSON lines.
import { Code, ConnectError } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { createCartClient } from "./gen/shop/v1/cart_shoal.js";
import { createInventoryClient } from "./gen/shop/v1/inventory_shoal.js";

const [baseUrl, protocol = "connect-http1"] = process.argv.slice(2);
if (baseUrl === undefined) throw new Error("usage: client.js <url> [connect-http1|connect-h2c|grpc-h2c]");
const transport =
  protocol === "grpc-h2c"
    ? createGrpcTransport({ baseUrl })
    : createConnectTransport({ baseUrl, httpVersion: protocol === "connect-h2c" ? "2" : "1.1" });
const user = `user-${protocol}`;
const inventory = createInventoryClient(transport);
const cart = createCartClient(transport);
const out = (step: string, value: unknown) => process.stdout.write(`${JSON.stringify({ step, value })}\n`);

out("restock", await inventory.restock({ sku: "hat", quantity: 5 }));
out("add", await cart.addItem({ userId: user, sku: "hat", quantity: 2 }));
try {
  await cart.addItem({ userId: user, sku: "hat", quantity: 50 });
  out("add-too-many", "unexpectedly accepted");
} catch (err) {
  const e = ConnectError.from(err);
  out("add-too-many", { code: Code[e.code], message: e.rawMessage });
}
out("view", await cart.view({ userId: user }));
const receipt = await cart.send.addItem({ userId: user, sku: "hat", quantity: 1 }, { idempotencyKey: `${user}-send` });
out("send", { accepted: receipt.messageId !== "" });
out("checkout", await cart.checkout({ userId: user }));
