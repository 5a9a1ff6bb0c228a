#!/usr/bin/env node
// `npm create shoal my-app` (npm runs `create-shoal my-app`): `shoal init my-app`,
// with init's own arguments (`--from <dir>` for packed tarballs) and messages.
import { createCli } from "@shoal/cli";

await createCli()
  .name("create-shoal")
  .parseAsync(["init", ...process.argv.slice(2)], { from: "user" });
