import { fromBinary, type Registry, toJsonString } from "@bufbuild/protobuf";
import type { EgressMessage } from "@shoal/sdk/internal";

/**
 * Delivers committed egress messages to the outside. Delivery is
 * at-least-once: after a crash, messages whose delivery was not recorded are
 * delivered again, with the same `id`, so a receiver can drop duplicates.
 */
export interface Egress {
  deliver(message: EgressMessage): Promise<void>;
}

/** Writes each message as one JSON line on stdout (development). */
export function createStdoutEgress(registry: Registry, write: (line: string) => void = (l) => process.stdout.write(l)): Egress {
  return {
    async deliver(message) {
      const schema = registry.getMessage(message.typeName);
      const body =
        schema !== undefined
          ? JSON.parse(toJsonString(schema, fromBinary(schema, message.payload)))
          : { base64: Buffer.from(message.payload).toString("base64") };
      write(`${JSON.stringify({ egress: message.egress, id: message.id, type: message.typeName, message: body })}\n`);
    },
  };
}
