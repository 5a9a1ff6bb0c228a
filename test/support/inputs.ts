// Inputs for tests of the shared inputs stream (storage/nats/shard-inputs.ts):
// one-way deposits to the bank example, and waiting for them to arrive.
import { create, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { type Envelope, EnvelopeSchema, requestId } from "@shoal/sdk/internal";
import { DepositRequestSchema } from "../../examples/bank/src/gen/bank/v1/account_pb.js";
import { AccountFunction } from "../../examples/bank/src/gen/bank/v1/account_shoal.js";

/** Envelope fields as `create` takes them: plain objects, not a message. */
export type EnvelopeFields = Exclude<MessageInitShape<typeof EnvelopeSchema>, Envelope>;

/** A one-way deposit of 1 to `account`, its transfer id the envelope id (so the ledger shows each application). */
export function deposit(account: string, id = requestId(), extra: EnvelopeFields = {}): Envelope {
  return create(EnvelopeSchema, {
    id,
    target: { type: AccountFunction.typeName, key: account },
    handler: "Deposit",
    payload: toBinary(DepositRequestSchema, create(DepositRequestSchema, { account, amount: 1n, transferId: id })),
    acceptedAtMs: BigInt(Date.now()),
    ...extra,
  });
}

/** Resolves once `check` holds, asking every 50 ms; throws naming `what` after `timeoutMs`. */
export async function until(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
