// `npm run bench` runs this after the build; the benchmark itself is TypeScript (bench/src/run.ts).
await import("./dist/run.js");
