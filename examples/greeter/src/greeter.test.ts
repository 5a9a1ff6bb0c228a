import { createTestEnv, type TestEnv } from "@shoal/testing";
import { afterEach, beforeEach, expect, it } from "vitest";
import { GreeterFunction } from "./gen/greeter/v1/greeter_shoal.js";
import greeterModule from "./module.js";

let env: TestEnv;
beforeEach(async () => {
  env = await createTestEnv({ functions: greeterModule });
});
afterEach(() => env.close());

it("greets and counts per name", async () => {
  const client = env.client(GreeterFunction);
  expect(await client.greet({ name: "Ada" })).toMatchObject({ greeting: "Hello, Ada!", times: 1 });
  expect(await client.greet({ name: "Ada" })).toMatchObject({ times: 2 });
  expect(await client.greet({ name: "Bob" })).toMatchObject({ times: 1 });
  expect(await client.count({ name: "Ada" })).toMatchObject({ times: 2 });
  expect(env.stateOf(GreeterFunction, "Ada")?.times).toBe(2);
});

it("runs concurrent greetings of one name one at a time", async () => {
  const client = env.client(GreeterFunction);
  const replies = await Promise.all(Array.from({ length: 50 }, () => client.greet({ name: "Cy" })));
  expect(replies.map((r) => r.times).sort((a, b) => a - b)).toEqual(Array.from({ length: 50 }, (_, i) => i + 1));
});
