// The image's HEALTHCHECK: exits 0 when GET $SHOAL_HEALTHZ_URL (default
// http://127.0.0.1:8080/healthz) answers 200, 1 otherwise. In node, as the
// runtime image has no shell and no curl.
const url = process.env.SHOAL_HEALTHZ_URL ?? "http://127.0.0.1:8080/healthz";
try {
  const res = await fetch(url, { signal: AbortSignal.timeout(2500) });
  if (!res.ok) process.stderr.write(`${url}: ${res.status} ${await res.text()}`);
  process.exit(res.ok ? 0 : 1);
} catch (err) {
  process.stderr.write(`${url}: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
}
