// The bank with hooks that pin down the moments a test of interrupted
// transfers needs, for `shoal dev` (the test sets SHOAL_TEST_PHASE):
// - "hang": transfer "t1" hangs once its deposit has returned, and says so on
//   stdout, so the test can kill the runtime between the deposit's commit and
//   the transfer's;
// - "cycle": transfer "t1" waits until transfer "t2" awaits its deposit call,
//   so t1's call closes a wait-for cycle whenever it asks its callee again;
// - "sigterm": deposits of transfers "held-*" never finish (their transfers
//   await them until the runtime stops), and a deposit "ping" emits to the
//   stdout egress, so its shard has a delivery to record for a moment after
//   the line appears (and a shard closing then closes a moment after one that
//   has none).
import { implement, module } from "@shoal/sdk";
import { account } from "../../examples/bank/src/account.js";
import { BalanceSchema } from "../../examples/bank/src/gen/bank/v1/account_pb.js";
import { AccountFunction } from "../../examples/bank/src/gen/bank/v1/account_shoal.js";

const phase = process.env.SHOAL_TEST_PHASE ?? "";
let t2Waits: () => void = () => {};
const t2Waiting = new Promise<void>((resolve) => (t2Waits = resolve));

export default module(
  implement(AccountFunction, {
    ...account,
    async deposit(req, ctx) {
      if (phase === "sigterm" && req.transferId.startsWith("held-")) {
        process.stdout.write(`holding ${req.transferId}\n`);
        return await new Promise<never>(() => {});
      }
      if (phase === "sigterm" && req.transferId === "ping") {
        ctx.state.balance += req.amount;
        ctx.egress("stdout", BalanceSchema, { balance: ctx.state.balance });
        return { balance: ctx.state.balance };
      }
      return account.deposit(req, ctx);
    },
    async transfer(req, ctx) {
      if (phase === "hang" && req.transferId === "t1") {
        await account.transfer(req, ctx);
        process.stdout.write(`deposited ${req.transferId}\n`);
        return await new Promise<never>(() => {});
      }
      if (phase === "cycle" && req.transferId === "t1") {
        process.stdout.write("t1 waits for t2\n");
        await t2Waiting;
      }
      const result = account.transfer(req, ctx);
      // account.transfer issues its call before its first await.
      if (phase === "cycle" && req.transferId === "t2") t2Waits();
      return await result;
    },
  }),
);
