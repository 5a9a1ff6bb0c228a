// compose.cluster.yaml checked without a container engine (none runs here;
// see README, "Cluster"): 3 NATS servers with JetStream clustered by routes
// to each other, and 3 runtime nodes from the repository's Containerfile,
// each its own node id, whose shoal.yaml (deploy/shoal-cluster.yaml) points
// at every server with 3 replicas.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { validateConfig } from "@shoal/runtime";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";
import { repoRoot } from "./support/processes.js";

// biome-ignore lint/suspicious/noExplicitAny: compose files are checked field by field, as untyped YAML.
type Yaml = any;

const read = (path: string) => readFileSync(join(repoRoot, path), "utf8");
// merge: the file shares settings between services with YAML anchors and `<<`.
const compose: Yaml = parse(read("compose.cluster.yaml"), { merge: true });
const services: Record<string, Yaml> = compose.services;
const natsServices = Object.keys(services).filter((name) => /^nats-\d+$/.test(name));
const nodeServices = Object.keys(services).filter((name) => /^shoal-\d+$/.test(name));

/** A service's command as arguments: compose splits one given as a string at spaces. */
const commandOf = (service: Yaml): string[] => (typeof service.command === "string" ? service.command.split(/\s+/) : service.command);
/** The value after `flag` in a service's command. */
const argument = (service: Yaml, flag: string): string | undefined => {
  const command = commandOf(service);
  const i = command.indexOf(flag);
  return i < 0 ? undefined : command[i + 1];
};
/** The named volume a service mounts at `path`, declared at the top level. */
const volumeAt = (service: Yaml, path: string): string | undefined => {
  const mount = (service.volumes as string[]).find((v) => v.split(":")[1] === path);
  const name = mount?.split(":")[0];
  return name !== undefined && name in compose.volumes ? name : undefined;
};

describe("compose.cluster.yaml", () => {
  it("has 3 NATS servers and 3 runtime nodes, and nothing else", () => {
    expect(natsServices).toEqual(["nats-1", "nats-2", "nats-3"]);
    expect(nodeServices).toEqual(["shoal-1", "shoal-2", "shoal-3"]);
    expect(Object.keys(services)).toHaveLength(6);
  });

  it("runs the official nats 2.9 image with JetStream, each server its own name and volume, routed to every server", () => {
    const names = new Set<string>();
    const volumes = new Set<string>();
    for (const name of natsServices) {
      const nats = services[name];
      expect(nats.image, name).toMatch(/(^|\/)nats:2\.9$/);
      expect(commandOf(nats), name).toContain("-js");
      names.add(argument(nats, "--name") as string);
      const store = argument(nats, "-sd") as string;
      const volume = volumeAt(nats, store);
      expect(volume, `${name}: a named volume at its JetStream store ${store}`).toBeDefined();
      volumes.add(volume as string);
      expect(argument(nats, "--cluster_name"), name).toBe("shoal");
      const listen = new URL(argument(nats, "--cluster") as string);
      const routes = (argument(nats, "--routes") as string).split(",").map((r) => new URL(r));
      expect(routes.map((r) => r.hostname).sort(), `${name}'s routes`).toEqual(natsServices);
      for (const route of routes) expect(route.port, `${name}'s route to ${route.hostname}`).toBe(listen.port);
    }
    expect(names).toEqual(new Set(natsServices));
    expect(volumes.size).toBe(natsServices.length);
  });

  it("runs every node from the image the Containerfile builds, with its own hostname (its node id), port and /data volume", () => {
    const builders = nodeServices.filter((name) => services[name].build !== undefined);
    expect(builders).toHaveLength(1);
    expect(services[builders[0] as string].build).toMatchObject({ context: ".", dockerfile: "Containerfile" });
    const image = services[builders[0] as string].image;
    const hostnames = new Set<string>();
    const hostPorts = new Set<string>();
    const volumes = new Set<string>();
    for (const name of nodeServices) {
      const node = services[name];
      expect(node.image, name).toBe(image);
      // No cluster.nodeId in the shared config: the hostname is each node's id.
      hostnames.add(node.hostname);
      expect(node.ports, name).toHaveLength(1);
      const [hostPort, containerPort] = (node.ports[0] as string).split(":");
      hostPorts.add(hostPort as string);
      expect(containerPort, name).toBe("8080");
      expect(node.volumes, name).toContain("./deploy/shoal-cluster.yaml:/etc/shoal/shoal.yaml:ro");
      volumes.add(volumeAt(node, "/data") as string);
      expect(Object.keys(node.depends_on).sort(), `${name} starts after every NATS server`).toEqual(natsServices);
    }
    expect(hostnames).toEqual(new Set(nodeServices));
    expect(hostPorts.size).toBe(nodeServices.length);
    expect(volumes.size).toBe(nodeServices.length);
  });
});

describe("the nodes' shoal.yaml (deploy/shoal-cluster.yaml)", () => {
  const config = validateConfig(parse(read("deploy/shoal-cluster.yaml")), "/etc/shoal");

  it("is a valid config on the nats backend: every server of compose.cluster.yaml, 3 replicas, a store in /data", () => {
    expect(config.storage.backend).toBe("nats");
    if (config.storage.backend !== "nats") return;
    // A server's client port is nats-server's default, 4222, unless its command sets -p.
    const clientUrls = natsServices.map((name) => `nats://${name}:${argument(services[name], "-p") ?? "4222"}`);
    expect([...config.storage.servers].sort()).toEqual(clientUrls);
    expect(config.storage.replicas).toBe(3);
    expect(config.storage.directory).toBe("/data");
  });

  it("serves on all interfaces at the port compose publishes, and sets no node id (each node's is its hostname)", () => {
    expect(config.ingress).toMatchObject({ host: "0.0.0.0", port: 8080 });
    expect(parse(read("deploy/shoal-cluster.yaml")).cluster?.nodeId).toBeUndefined();
    expect(config.functions.module).toBe("/app/examples/shopping-cart/dist/module.js");
  });
});
