#!/usr/bin/env node
import { createCli } from "../dist/cli.js";

await createCli().parseAsync(process.argv);
