// The deployment files, checked without a container engine or a cluster (none
// is reachable here; scripts/container-smoke.sh builds and runs the image):
// the Kubernetes manifests and compose.yaml parsed and cross-checked against
// each other, the Containerfile and the image's shoal.yaml; and the image's
// healthcheck script run against a real node.
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { validateConfig } from "@shoal/runtime";
import { afterAll, describe, expect, it } from "vitest";
import { parse, parseAllDocuments } from "yaml";
import { freePort, repoRoot, start } from "./support/processes.js";

// biome-ignore lint/suspicious/noExplicitAny: manifests are checked field by field, as untyped YAML.
type Yaml = any;

const read = (path: string) => readFileSync(join(repoRoot, path), "utf8");
const manifests: Yaml[] = readdirSync(join(repoRoot, "deploy/k8s"))
  .filter((f) => f.endsWith(".yaml"))
  .flatMap((f) => parseAllDocuments(read(`deploy/k8s/${f}`)).map((d) => d.toJS()));
const one = (kind: string, name: string): Yaml => {
  const found = manifests.filter((m) => m.kind === kind && m.metadata?.name === name);
  expect(found, `${kind} ${name} in deploy/k8s`).toHaveLength(1);
  return found[0];
};
const compose: Yaml = parse(read("compose.yaml"));
const imageConfig: Yaml = parse(read("deploy/shoal.yaml"));
const containerfile = read("Containerfile");

/** The Containerfile's instructions, continuation lines joined, comments dropped. */
const instructions = containerfile
  .replace(/\\\n/g, " ")
  .split("\n")
  .map((l) => l.trim())
  .filter((l) => l !== "" && !l.startsWith("#"));
const instruction = (name: string) => instructions.filter((l) => l.startsWith(`${name} `)).map((l) => l.slice(name.length + 1).trim());
/** The last stage's instructions (the image). */
const lastStage = instructions.slice(instructions.findLastIndex((l) => l.startsWith("FROM ")));

/** The functions' URL in the image's shoal.yaml: the service the runtime calls. */
const functionsUrl = new URL(imageConfig.functions.remote[0].url);

describe("Containerfile", () => {
  it("is multi-stage, from a base image given as a build argument", () => {
    expect(instruction("ARG")).toContainEqual(expect.stringMatching(/^BASE=/));
    const froms = instruction("FROM");
    expect(froms.length).toBeGreaterThanOrEqual(2);
    expect(froms.at(-1)).toBe("$" + "{BASE}"); // the image itself is FROM the BASE argument
  });

  it("runs shoal-node as a non-root user, exec form, on the baked shoal.yaml, with /data a volume", () => {
    const final = (name: string) => lastStage.filter((l) => l.startsWith(`${name} `)).map((l) => l.slice(name.length + 1).trim());
    const user = final("USER").at(-1) ?? "";
    expect(user).toMatch(/^[1-9][0-9]*(:[0-9]+)?$/);
    expect(final("VOLUME")).toEqual(["/data"]);
    // JSON arrays: exec form, so SIGTERM reaches node rather than a shell.
    const entrypoint = JSON.parse(final("ENTRYPOINT").at(-1) ?? "null");
    expect(entrypoint).toEqual(["node", "/app/packages/runtime/bin/shoal-node.js"]);
    expect(existsSync(join(repoRoot, "packages/runtime/bin/shoal-node.js"))).toBe(true);
    expect(JSON.parse(final("CMD").at(-1) ?? "null")).toEqual(["--config", "/etc/shoal/shoal.yaml"]);
    expect(final("COPY")).toContain("deploy/shoal.yaml /etc/shoal/shoal.yaml");
    expect(final("COPY")).toContainEqual(expect.stringMatching(new RegExp(`--chown=${user} /data /data$`)));
  });

  it("has a healthcheck on /healthz, in exec form", () => {
    const healthcheck = lastStage.find((l) => l.startsWith("HEALTHCHECK ")) ?? "";
    const cmd = JSON.parse(healthcheck.slice(healthcheck.indexOf("CMD ") + 4));
    expect(cmd).toEqual(["node", "/app/deploy/healthcheck.mjs"]);
    expect(lastStage.find((l) => l.startsWith("ENV "))).toMatch(/SHOAL_HEALTHZ_URL=http:\/\/127\.0\.0\.1:8080\/healthz/);
  });
});

describe("the image's shoal.yaml (deploy/shoal.yaml)", () => {
  it("is a valid config serving on all interfaces, storing in /data, with the shopping cart remote", () => {
    const config = validateConfig(imageConfig, "/etc/shoal");
    expect(config.ingress.host).toBe("0.0.0.0");
    expect(config.ingress.port).toBe(8080);
    expect(config.storage).toMatchObject({ backend: "local", directory: "/data" });
    expect(config.functions.descriptors).toBe("/app/examples/shopping-cart/functions.binpb");
    expect(config.functions.remote.map((e) => e.package)).toEqual(["shop.v1"]);
    expect(functionsUrl.hostname).toBe("shopping-cart-functions");
  });

  it("is what the Kubernetes ConfigMap holds", () => {
    expect(parse(one("ConfigMap", "shoal-config").data["shoal.yaml"])).toEqual(imageConfig);
  });
});

describe("Kubernetes manifests (deploy/k8s)", () => {
  const statefulSet = one("StatefulSet", "shoal-runtime");
  const deployment = one("Deployment", "shopping-cart-functions");
  const pod = (workload: Yaml) => workload.spec.template.spec;
  const container = (workload: Yaml) => {
    expect(pod(workload).containers).toHaveLength(1);
    return pod(workload).containers[0];
  };
  const portNames = (workload: Yaml) => container(workload).ports.map((p: Yaml) => p.name);
  /** The Service that selects `workload`'s pods. */
  const serviceOf = (workload: Yaml): Yaml => {
    const labels = workload.spec.template.metadata.labels;
    const services = manifests.filter((m) => m.kind === "Service" && Object.entries(m.spec.selector).every(([k, v]) => labels[k] === v));
    expect(services).toHaveLength(1);
    return services[0];
  };

  it("has the kinds the deployment needs, each with a name", () => {
    expect(manifests.map((m) => m.kind).sort()).toEqual(["ConfigMap", "Deployment", "Service", "Service", "StatefulSet"]);
    for (const m of manifests) {
      expect(m.apiVersion, m.kind).toBe(m.kind === "StatefulSet" || m.kind === "Deployment" ? "apps/v1" : "v1");
      expect(m.metadata.name).toMatch(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/);
    }
  });

  it("selects each workload's own pods", () => {
    for (const w of [statefulSet, deployment]) {
      expect(w.spec.template.metadata.labels).toMatchObject(w.spec.selector.matchLabels);
    }
    expect(statefulSet.spec.serviceName).toBe(serviceOf(statefulSet).metadata.name);
  });

  it("runs the runtime with its /data volume claim and the ConfigMap's shoal.yaml", () => {
    const c = container(statefulSet);
    const claims = statefulSet.spec.volumeClaimTemplates.map((t: Yaml) => t.metadata.name);
    const data = c.volumeMounts.find((m: Yaml) => m.mountPath === "/data");
    expect(claims).toContain(data.name);
    const config = c.volumeMounts.find((m: Yaml) => m.mountPath === "/etc/shoal");
    const volume = pod(statefulSet).volumes.find((v: Yaml) => v.name === config.name);
    expect(volume.configMap.name).toBe("shoal-config");
    expect(c.args).toEqual(["--config", "/etc/shoal/shoal.yaml"]);
    expect(c.command).toBeUndefined(); // the image's entry point
    expect(pod(statefulSet).securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: 10001, fsGroup: 10001 });
  });

  it("probes the runtime's /healthz on its ingress port", () => {
    const c = container(statefulSet);
    for (const probe of ["startupProbe", "livenessProbe", "readinessProbe"]) {
      expect(c[probe]?.httpGet, probe).toMatchObject({ path: "/healthz" });
      const port = c.ports.find((p: Yaml) => p.name === c[probe].httpGet.port || p.containerPort === c[probe].httpGet.port);
      expect(port.containerPort, probe).toBe(imageConfig.ingress.port);
    }
    const service = serviceOf(statefulSet);
    expect(portNames(statefulSet)).toEqual(expect.arrayContaining(service.spec.ports.map((p: Yaml) => p.targetPort)));
  });

  it("serves the functions at the address the runtime's shoal.yaml calls", () => {
    const c = container(deployment);
    expect(c.command).toEqual(["node", "/app/examples/shopping-cart/dist/serve-functions.js"]);
    expect(existsSync(join(repoRoot, "examples/shopping-cart/src/serve-functions.ts"))).toBe(true);
    const port = c.env.find((e: Yaml) => e.name === "PORT").value;
    const service = serviceOf(deployment);
    expect(service.metadata.name).toBe(functionsUrl.hostname);
    const servicePort = service.spec.ports.find((p: Yaml) => String(p.port) === functionsUrl.port);
    const target = c.ports.find((p: Yaml) => p.name === servicePort.targetPort);
    expect(String(target.containerPort)).toBe(port);
    for (const probe of ["readinessProbe", "livenessProbe"]) {
      expect(portNames(deployment), probe).toContain(c[probe].tcpSocket.port);
    }
  });

  it("runs one image, the one compose builds", () => {
    const images = new Set([statefulSet, deployment].map((w) => container(w).image));
    expect([...images]).toEqual([compose.services.runtime.image]);
  });
});

describe("compose.yaml", () => {
  it("builds the image from the Containerfile and runs the runtime with a /data volume", () => {
    const runtime = compose.services.runtime;
    expect(runtime.build).toMatchObject({ context: ".", dockerfile: "Containerfile" });
    const data = runtime.volumes.find((v: string) => v.endsWith(":/data"));
    expect(Object.keys(compose.volumes)).toContain(data.split(":")[0]);
    expect(runtime.volumes).toContain("./deploy/shoal.yaml:/etc/shoal/shoal.yaml:ro");
    expect(runtime.ports).toContain(`${imageConfig.ingress.port}:${imageConfig.ingress.port}`);
  });

  it("runs the shopping-cart functions as their own service, where the runtime calls them, node itself as the process", () => {
    const functions = compose.services[functionsUrl.hostname];
    expect(functions.image).toBe(compose.services.runtime.image);
    expect(functions.entrypoint).toEqual(["node", "/app/examples/shopping-cart/dist/serve-functions.js"]);
    expect(functions.environment.PORT).toBe(functionsUrl.port);
  });
});

describe("the image's healthcheck (deploy/healthcheck.mjs)", () => {
  const dir = mkdtempSync(join(tmpdir(), "shoal-healthcheck-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const healthcheck = (url: string) =>
    spawnSync(process.execPath, [join(repoRoot, "deploy/healthcheck.mjs")], {
      env: { ...process.env, SHOAL_HEALTHZ_URL: url },
      encoding: "utf8",
    });

  it("exits 0 while a node serves, and 1 naming the URL once it is gone", async () => {
    const port = await freePort();
    writeFileSync(
      join(dir, "shoal.yaml"),
      `shards: 2\ningress: { port: ${port} }\nstorage: { directory: ./data }\nfunctions: { module: ${join(repoRoot, "examples/shopping-cart/dist/module.js")} }\n`,
    );
    const node = start(process.execPath, [join(repoRoot, "packages/runtime/bin/shoal-node.js"), "--config", join(dir, "shoal.yaml")]);
    const url = `http://127.0.0.1:${port}/healthz`;
    try {
      await node.waitFor(/shoal-node: listening at /, 60_000);
      const healthy = healthcheck(url);
      expect(healthy.stderr).toBe("");
      expect(healthy.status).toBe(0);
    } finally {
      node.process.kill("SIGTERM");
      expect(await node.exited).toBe(0);
    }
    const gone = healthcheck(url);
    expect(gone.status).toBe(1);
    expect(gone.stderr).toContain(url);
  });
});
