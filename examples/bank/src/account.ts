import { create } from "@bufbuild/protobuf";
import { Code, ShoalError } from "@shoal/sdk";
import { LedgerEntrySchema } from "./gen/bank/v1/account_pb.js";
import { AccountFunction, type AccountHandlers } from "./gen/bank/v1/account_shoal.js";

export const account: AccountHandlers = {
  deposit(req, ctx) {
    if (req.amount <= 0n) throw new ShoalError(Code.InvalidArgument, "deposit needs a positive amount");
    ctx.state.balance += req.amount;
    if (req.transferId !== "") ctx.state.ledger.push(create(LedgerEntrySchema, { transferId: req.transferId, amount: req.amount }));
    return { balance: ctx.state.balance };
  },

  withdraw(req, ctx) {
    if (req.amount <= 0n) throw new ShoalError(Code.InvalidArgument, "withdraw needs a positive amount");
    if (ctx.state.balance < req.amount)
      throw new ShoalError(Code.FailedPrecondition, `balance ${ctx.state.balance} is below ${req.amount}`);
    ctx.state.balance -= req.amount;
    return { balance: ctx.state.balance };
  },

  async transfer(req, ctx) {
    if (req.amount <= 0n) throw new ShoalError(Code.InvalidArgument, "transfer needs a positive amount");
    if (req.to === ctx.key) throw new ShoalError(Code.InvalidArgument, "cannot transfer to the same account");
    if (req.transferId === "") throw new ShoalError(Code.InvalidArgument, "transfer needs a transfer_id");
    if (ctx.state.balance < req.amount)
      throw new ShoalError(Code.FailedPrecondition, `balance ${ctx.state.balance} is below ${req.amount}`);
    // The withdrawal commits only together with the deposit's reply: if the
    // deposit fails, the handler throws and the withdrawal is discarded.
    ctx.state.balance -= req.amount;
    ctx.state.ledger.push(create(LedgerEntrySchema, { transferId: req.transferId, amount: -req.amount }));
    await ctx.call(AccountFunction).deposit({ account: req.to, amount: req.amount, transferId: req.transferId });
    return { transferId: req.transferId, balance: ctx.state.balance };
  },

  get(_req, ctx) {
    return { balance: ctx.state.balance, ledger: ctx.state.ledger.map((e) => ({ transferId: e.transferId, amount: e.amount })) };
  },
};
