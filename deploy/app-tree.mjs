// The runtime image's /app, from a built checkout: `node deploy/app-tree.mjs <checkout> <dest>`.
// It holds what `shoal-node` and the shopping-cart endpoint run (the built
// @shoal/runtime and @shoal/sdk, the example's dist and descriptor set) and a
// package.json whose workspaces are only those, so that `npm install
// --omit=dev` in <dest> installs their production dependencies at the
// versions package-lock.json pins, and none of the development tooling.
import { cpSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const [source, dest] = process.argv.slice(2);
if (source === undefined || dest === undefined) {
  process.stderr.write("usage: node deploy/app-tree.mjs <built checkout> <destination>\n");
  process.exit(2);
}

/** Workspace folders in the image, and what of each it needs at run time. */
const workspaces = {
  "packages/sdk": ["package.json", "dist"],
  "packages/runtime": ["package.json", "dist", "bin"],
  "examples/shopping-cart": ["package.json", "dist", "functions.binpb"],
};

for (const [dir, entries] of Object.entries(workspaces)) {
  for (const entry of entries) {
    const from = join(source, dir, entry);
    if (!existsSync(from)) {
      process.stderr.write(`app-tree: ${from} is missing: run npm run build (and buf build for functions.binpb) first\n`);
      process.exit(1);
    }
    // Source maps and declarations stay out: nothing in the image reads them.
    cpSync(from, join(dest, dir, entry), { recursive: true, filter: (f) => !/\.(d\.ts|map)$/.test(f) });
  }
}

const json = (path) => JSON.parse(readFileSync(path, "utf8"));
const root = json(join(source, "package.json"));
writeFileSync(
  join(dest, "package.json"),
  `${JSON.stringify({ name: root.name, private: true, type: "module", workspaces: Object.keys(workspaces) }, null, 2)}\n`,
);
cpSync(join(source, "package-lock.json"), join(dest, "package-lock.json"));
// The example's devDependencies (@shoal/cli, @shoal/testing) are workspaces the image leaves out.
const example = json(join(dest, "examples/shopping-cart/package.json"));
delete example.devDependencies;
writeFileSync(join(dest, "examples/shopping-cart/package.json"), `${JSON.stringify(example, null, 2)}\n`);
cpSync(join(source, "deploy/healthcheck.mjs"), join(dest, "deploy/healthcheck.mjs"));
