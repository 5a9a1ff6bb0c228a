import { createRegistry, type DescMessage, fromBinary, type Message, type MessageShape } from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import { createRouterTransport, type Transport } from "@connectrpc/connect";
import {
  createManualClock,
  createMemoryStorage,
  createRuntime,
  type Egress,
  type ManualClock,
  type Runtime,
  type RuntimeOptions,
} from "@shoal/runtime";
import { createFunctionClient, type FunctionClient, type FunctionType, type Implementation, type ShoalModule } from "@shoal/sdk";

/** Options of `createTestEnv`. */
export interface TestEnvOptions {
  /** The functions under test. */
  readonly functions: ShoalModule | readonly Implementation[];
  /** Shards of the in-process runtime. Default 4. */
  readonly shards?: number;
  /** Where the manual clock starts (ms since the Unix epoch). Default: now. */
  readonly startAt?: number;
  /** Retry policy; default 3 attempts, 1 ms apart, so failing tests fail fast. */
  readonly retry?: RuntimeOptions["retry"];
  /** Log level of the runtime. Default "silent". */
  readonly logLevel?: "debug" | "info" | "warn" | "error" | "silent";
}

/** A message a handler sent to an egress, as the test env captured it. */
export interface EgressedMessage {
  readonly egress: string;
  readonly id: string;
  readonly typeName: string;
  /** The decoded message, or undefined if its type is not in the functions' files. */
  readonly message: Message | undefined;
}

/** The real runtime, in process, on the memory store. */
export interface TestEnv {
  /** A typed client of a function, over an in-memory Connect transport (the real ingress, no sockets). */
  client<Svc extends GenService<GenServiceMethods>>(fn: FunctionType<Svc, DescMessage | undefined, unknown>): FunctionClient<Svc>;
  /** The committed state of an instance, or undefined. */
  stateOf<S extends DescMessage>(fn: FunctionType<GenService<GenServiceMethods>, S, unknown>, key: string): MessageShape<S> | undefined;
  /** The clock delayed messages and state TTL run on: `await env.clock.advance(ms)`. */
  readonly clock: ManualClock;
  /** The in-memory Connect transport, for other clients. */
  readonly transport: Transport;
  readonly runtime: Runtime;
  /** Every egress message so far, decoded, in commit order; filter by name with `egressed("orders")`. */
  egressed(name?: string): EgressedMessage[];
  /** Waits until no invocation is running (after sends and timers). */
  settled(): Promise<void>;
  close(): Promise<void>;
}

/**
 * Starts the real runtime in process on the memory store with a manual clock.
 *
 * @example
 * const env = await createTestEnv({ functions: [implement(CartFunction, cart)] });
 * await env.client(CartFunction).addItem({ userId: "joe", sku: "socks", quantity: 1 });
 * expect(env.stateOf(CartFunction, "joe")?.items).toEqual({ socks: 1 });
 */
export async function createTestEnv(options: TestEnvOptions): Promise<TestEnv> {
  const clock = createManualClock(options.startAt);
  const captured: EgressedMessage[] = [];
  const implementations = "implementations" in options.functions ? options.functions.implementations : options.functions;
  const registry = createRegistry(...implementations.map((i) => i.fn.service.file));
  const capture: Egress = {
    async deliver(m) {
      const schema = registry.getMessage(m.typeName);
      captured.push({ egress: m.egress, id: m.id, typeName: m.typeName, message: schema ? fromBinary(schema, m.payload) : undefined });
    },
  };
  const runtime = createRuntime({
    functions: options.functions,
    storage: createMemoryStorage(),
    shards: options.shards ?? 4,
    clock,
    // Every egress name is captured: tests need no egress configuration.
    defaultEgress: capture,
    logger: options.logLevel ?? "silent",
    retry: options.retry ?? { maxAttempts: 3, initialDelayMs: 1, maxDelayMs: 1 },
  });
  await runtime.start();
  const transport = createRouterTransport(runtime.routes, { router: { readMaxBytes: runtime.maxRequestBytes } });
  return {
    clock,
    transport,
    runtime,
    client: (fn) => createFunctionClient(fn, transport),
    stateOf: (fn, key) => runtime.stateOf(fn, key),
    egressed: (name) => captured.filter((m) => name === undefined || m.egress === name),
    async settled() {
      // Deliveries and their invocations chain through the event loop.
      for (let i = 0; i < 20; i++) {
        await runtime.whenIdle();
        await new Promise((resolve) => setTimeout(resolve, 1));
      }
    },
    close: () => runtime.close(),
  };
}
