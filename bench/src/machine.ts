import { readFileSync, statfsSync } from "node:fs";
import { cpus } from "node:os";

// What the benchmarks print about the machine they ran on.

/** The CPU's model name. */
export function cpuModel(): string {
  try {
    const match = /^model name\s*:\s*(.+)$/m.exec(readFileSync("/proc/cpuinfo", "utf8"));
    if (match?.[1] !== undefined) return match[1].trim();
  } catch {
    // not Linux
  }
  return cpus()[0]?.model ?? "unknown";
}

/** The file system `path` is on, by name where known. */
export function filesystemOf(path: string): string {
  // statfs magic numbers, in hex as in statfs(2)
  const names: Record<string, string> = {
    ef53: "ext4",
    "58465342": "xfs",
    "9123683e": "btrfs",
    "1021994": "tmpfs",
    "794c7630": "overlayfs",
    "2fc12fc1": "zfs",
    "6969": "nfs",
  };
  try {
    const type = statfsSync(path).type;
    return names[type.toString(16)] ?? `fs type 0x${type.toString(16)}`;
  } catch {
    return "unknown fs";
  }
}
