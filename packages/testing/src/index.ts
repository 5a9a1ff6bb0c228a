export { createTestEnv } from "./test-env.js";
export type { EgressedMessage, TestEnv, TestEnvOptions } from "./test-env.js";
