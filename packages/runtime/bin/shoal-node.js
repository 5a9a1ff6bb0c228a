#!/usr/bin/env node
import { shoalNodeMain } from "../dist/serve.js";

await shoalNodeMain(process.argv.slice(2));
