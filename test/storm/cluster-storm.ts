// The cluster's crash test (issue 10, item 5): 3 nats-server processes (R3)
// and N runtime nodes of the bank on loopback, the load client sending
// transfers through every node's ingress in turn, and a storm of faults in a
// random order: SIGKILLs of runtime nodes (each restarted after a short random
// pause), SIGKILLs of nats-servers one at a time (each restarted, and the next
// only once JetStream has a meta leader again), and SIGSTOPs of a node for
// longer than its lease, then SIGCONT. Once the faults are over, the checks of
// the single-node storm (test/storm/bank-storm.ts: exactly once, money
// conserved, retryable codes only) must hold, and no node may have exited by
// itself. SHOAL_STORM_SEED repeats a storm's order and timing.

import { writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { jetstreamManager } from "@nats-io/jetstream";
import { type ClusterNodes, startClusterNodes } from "../support/cluster-nodes.js";
import { type NatsCluster, startNatsCluster } from "../support/nats-cluster.js";
import type { Child } from "../support/processes.js";
import {
  type BankStormReport,
  checkAnswers,
  checkBank,
  logExcerpt,
  seededRandom,
  sleep,
  startLoadClient,
  stopLoadClient,
  summarize,
} from "./bank-storm.js";

/** One cluster storm's shape. */
export interface ClusterStormOptions {
  /** Printed with the summary and every failure. */
  readonly name: string;
  /** Runtime nodes; default 3. */
  readonly nodes?: number;
  /** `shards` of the nodes; default 8. */
  readonly shards?: number;
  /** SIGKILLs of a random running node, each restarted. */
  readonly nodeKills: number;
  /** SIGKILLs of a random nats-server, one at a time, each restarted. */
  readonly natsKills: number;
  /** SIGSTOPs of a random node for longer than its lease, each followed by SIGCONT. */
  readonly pauses: number;
  /** `cluster.leaseMs` of the nodes; default 2000. */
  readonly leaseMs?: number;
  /** Default SHOAL_STORM_SEED, else random. */
  readonly seed?: number;
  /**
   * How long the whole storm may take before it stops and reports the step
   * it was stuck at, with every node's log; default 270 s (the test's
   * timeout would say nothing).
   */
  readonly deadlineMs?: number;
}

type Fault = "node" | "nats" | "pause";

/** Runs one cluster storm to its end and checks the bank; never throws for a failed check. */
export async function runClusterStorm(options: ClusterStormOptions): Promise<BankStormReport> {
  const seed = options.seed ?? Number(process.env.SHOAL_STORM_SEED ?? Math.floor(Math.random() * 2 ** 32));
  const random = seededRandom(seed);
  const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)] as T;
  const accounts = 8;
  const initial = 1000;
  const leaseMs = options.leaseMs ?? 2000;
  process.stdout.write(`cluster storm ${options.name}: seed ${seed} (SHOAL_STORM_SEED=${seed} repeats it)\n`);

  const faults: Fault[] = [
    ...Array.from({ length: options.nodeKills }, () => "node" as const),
    ...Array.from({ length: options.natsKills }, () => "nats" as const),
    ...Array.from({ length: options.pauses }, () => "pause" as const),
  ];
  for (let i = faults.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [faults[i], faults[j]] = [faults[j] as Fault, faults[i] as Fault];
  }

  const failures: string[] = [];
  const done = { node: 0, nats: 0, pause: 0 };
  let nats: NatsCluster | undefined;
  let cluster: ClusterNodes | undefined;
  let client: Child | undefined;
  let watch: { stop(): Promise<string[]> } | undefined;
  /** What the storm is doing, for the report of a storm stuck past its deadline. */
  let step = "starting 3 nats-servers";
  let deadline: NodeJS.Timeout | undefined;
  const stuck = new Promise<never>((_, reject) => {
    const ms = options.deadlineMs ?? 270_000;
    deadline = setTimeout(() => reject(new Error(`stuck for ${ms} ms in all, at: ${step}`)), ms);
  });
  const run = async (): Promise<BankStormReport> => {
    nats = await startNatsCluster({ size: 3 });
    step = "starting the nodes";
    // SHOAL_STORM_LOG_LEVEL=info (say) logs more; a failed storm writes every node's whole log to a file.
    const logLevel = process.env.SHOAL_STORM_LOG_LEVEL;
    cluster = await startClusterNodes({ nats, count: options.nodes ?? 3, shards: options.shards ?? 8, leaseMs, logLevel });
    const { nodes } = cluster;
    watch = watchInputsStream(nats);
    step = "starting the load client";
    // With cycles, as on one node: transfers crossing between nodes are answered as call cycles, each exactly once.
    // 30 s to settle rather than one node's 15: a call or result lost around a nats-server restart is asked for again
    // only after callResendMs (10 s), and shards may still be moving between the nodes when the last fault ends.
    client = await startLoadClient(cluster.urls, { accounts, workers: 12, initial, seed, settleMs: 30_000 });

    for (const fault of faults) {
      await sleep(150 + random() * 450);
      const nth = `fault ${done.node + done.nats + done.pause + 1} of ${faults.length}`;
      if (fault === "node") {
        const node = pick(nodes);
        step = `${nth}: SIGKILL of ${node.id}`;
        await node.kill();
        await sleep(random() * 1000);
        step = `${nth}: starting ${node.id} again after its SIGKILL`;
        await node.start();
      } else if (fault === "nats") {
        const server = pick(nats.servers);
        step = `${nth}: SIGKILL of a nats-server`;
        await server.kill();
        await sleep(random() * 1000);
        step = `${nth}: restarting the nats-server, and the cluster's readiness`;
        await server.restart();
        await nats.ready(60_000);
      } else {
        const node = pick(nodes);
        step = `${nth}: SIGSTOP of ${node.id}`;
        node.pause();
        // Longer than the lease, so that another node may take its shards meanwhile.
        await sleep(leaseMs * 2 + random() * leaseMs);
        node.resume();
      }
      done[fault]++;
      // A node that died by itself is restarted, so the storm goes on; the check below reports it.
      step = `${nth}: restarting nodes that died by themselves`;
      for (const node of nodes) if (!node.running) await node.start();
    }

    // The faults are over: let the client run against a healthy cluster, then drain.
    await sleep(2000);
    step = "draining the load client (it retries unanswered transfers until its settle time)";
    const load = await stopLoadClient(client);
    const url = nodes[0]?.url as string;
    step = "checking the bank through the first node";
    const { balanceTotal, checkFailures, suspects } = await checkBank(url, accounts, initial, load);
    failures.push(...checkFailures, ...checkAnswers(`cluster ${options.name}`, load));
    for (const node of nodes) failures.push(...node.unexpectedExits);

    const summary =
      `cluster storm ${options.name} (seed ${seed}): ${nodes.length} nodes, 3 nats-servers (R3), ${options.shards ?? 8} shards, lease ${leaseMs} ms, ` +
      `${done.node} node SIGKILLs, ${done.nats} nats-server SIGKILLs, ${done.pause} SIGSTOPs, ` +
      `${load.acknowledged.length} transfers acknowledged, ${load.retries} retries (${JSON.stringify(load.retriedCodes)}), ` +
      `${load.refused.length} refused (${summarize(load.refused)}), ${load.abandoned.length} abandoned, ${load.nonRetryable.length} non-retryable answers, ` +
      `${nodes.reduce((n, node) => n + (node.log().match(/keeps refusing a consumer of [^ ]* for one it no longer lists/g) ?? []).length, 0)} sweeps for a consumer the inputs stream no longer lists (${nodes.reduce((n, node) => n + (node.log().match(/made and deleted consumer/g) ?? []).length, 0)} cleared), ` +
      `${nodes.reduce((n, node) => n + (node.log().match(/inputs of [^ ]* from stream [^ ]* by their sequence/g) ?? []).length, 0)} reads of a shard's inputs by sequence, ` +
      `total balance ${balanceTotal} of ${accounts * initial}: ${failures.length === 0 ? "ok" : `${failures.length} checks FAILED`}`;
    process.stdout.write(`${summary}\n`);
    // SHOAL_STORM_KEEP_LOG=1 writes the logs of a storm that passed too.
    if (failures.length > 0 || process.env.SHOAL_STORM_KEEP_LOG !== undefined) {
      const streamLog = [...((await watch?.stop()) ?? []), ...(await inputsBacklog(nats))].join("\n");
      const logs = `${nodes.map((n) => `--- ${n.id}\n${n.log()}`).join("")}--- the inputs stream's leader, as the harness saw it\n${streamLog}\n`;
      const file = join(tmpdir(), `shoal-cluster-storm-${seed}.log`);
      writeFileSync(file, logs);
      if (failures.length > 0) failures.push(`every node's log: ${file}`, logExcerpt(logs, suspects));
    }
    return { seed, summary, failures };
  };
  try {
    const running = run();
    // Left running when the deadline passes: the finally below kills what it waits for.
    running.catch(() => {});
    return await Promise.race([running, stuck]);
  } catch (err) {
    // A harness step that failed (a node that never listened again, a cluster without a leader) is a failure of the storm too.
    const so = `after ${done.node} node SIGKILLs, ${done.nats} nats-server SIGKILLs and ${done.pause} SIGSTOPs`;
    const logs = cluster?.nodes.map((n) => `--- ${n.id}\n${n.log().trimEnd().split("\n").slice(-15).join("\n")}`).join("\n") ?? "";
    failures.push(`cluster storm ${options.name} (seed ${seed}) broke ${so}: ${(err as Error).message}\n${logs}`);
    if (cluster !== undefined) {
      const file = join(tmpdir(), `shoal-cluster-storm-${seed}.log`);
      writeFileSync(file, cluster.nodes.map((n) => `--- ${n.id}\n${n.log()}`).join(""));
      failures.push(`every node's log: ${file}`);
    }
    return { seed, summary: failures[0] as string, failures };
  } finally {
    clearTimeout(deadline);
    await watch?.stop();
    client?.process.kill("SIGKILL");
    await cluster?.close();
    await nats?.close();
  }
}

/**
 * Polls the inputs stream's cluster state twice a second and keeps each
 * change (leader, replicas current or not, or the error of the question),
 * with the time: what a failed storm's log is read against.
 */
function watchInputsStream(nats: NatsCluster): { stop(): Promise<string[]> } {
  const changes: string[] = [];
  let stopped = false;
  const running = (async () => {
    const nc = await nats.connect();
    try {
      let last = "";
      while (!stopped) {
        const state = await jetstreamManager(nc, { timeout: 1_000 })
          .then((jsm) => jsm.streams.info("shoal-inputs"))
          .then(
            (info) =>
              `leader ${info.cluster?.leader ?? "none"}; ${(info.cluster?.replicas ?? []).map((r) => `${r.name} ${r.offline ? "offline" : r.current ? "current" : `behind (lag ${r.lag ?? "?"})`}`).join(", ")}`,
            (err: unknown) => `no answer: ${(err as Error).message}`,
          );
        if (state !== last) changes.push(`{"time":${Date.now()},"msg":"inputs stream: ${state.replaceAll('"', "'")}"}`);
        last = state;
        await sleep(500);
      }
    } finally {
      await nc.close();
    }
  })();
  return {
    async stop() {
      stopped = true;
      await running.catch((err: unknown) => changes.push(`watching the inputs stream failed: ${(err as Error).message}`));
      return changes;
    },
  };
}

/** What each shard's subject of the inputs stream still holds, and each inputs consumer's state: for a failed storm's log. */
async function inputsBacklog(nats: NatsCluster): Promise<string[]> {
  const lines: string[] = [];
  const line = (text: string) => lines.push(`{"time":${Date.now()},"msg":"${text.replaceAll('"', "'")}"}`);
  try {
    const nc = await nats.connect();
    try {
      const jsm = await jetstreamManager(nc, { timeout: 5_000 });
      const info = await jsm.streams.info("shoal-inputs", { subjects_filter: "shoal.in.*" });
      line(
        `inputs stream at the end: ${info.state.messages} messages, first ${info.state.first_seq}, last ${info.state.last_seq}, per subject ${JSON.stringify(info.state.subjects ?? {})}`,
      );
      // What the stream's leader holds, message by message (its per-subject counts can be wrong on 2.9).
      const held: string[] = [];
      for (let seq = info.state.first_seq; seq <= info.state.last_seq && held.length < 50; seq++) {
        const message = await jsm.streams.getMessage("shoal-inputs", { seq }).catch((err: unknown) => `${(err as Error).message}`);
        if (message !== null) held.push(`${seq}: ${typeof message === "string" ? message : message.subject}`);
      }
      line(`inputs stream at the end, message by message: ${held.join(", ")}`);
      for await (const c of await jsm.consumers.list("shoal-inputs")) {
        line(
          `consumer ${c.name} (${c.config.filter_subject}): delivered ${c.delivered.consumer_seq}/${c.delivered.stream_seq}, ack floor ${c.ack_floor.consumer_seq}/${c.ack_floor.stream_seq}, ack pending ${c.num_ack_pending}, pending ${c.num_pending}, waiting pulls ${c.num_waiting}, leader ${c.cluster?.leader ?? "none"}`,
        );
      }
    } finally {
      await nc.close();
    }
  } catch (err) {
    line(`reading the inputs stream's backlog failed: ${(err as Error).message}`);
  }
  return lines;
}
