// Driver of the workerd side of benchmarks/workerd.py.
//
//   node run.mjs [--storage memory|disk]
//
// Starts workerd through Miniflare with the Counter Durable Object of
// worker.mjs on SQLite-backed storage (Miniflare's `useSQLite`): in memory
// (`unsafeEphemeralDurableObjects`, the default) or in SQLite files of a
// temporary directory (`--storage disk`, Miniflare's own default). Prints
// one JSON line
// {"ready": true, "miniflare": ..., "workerd": ..., ...}, then reads requests
// from stdin, one JSON object a line: {"op": "incr" | "ping", "seconds": S}.
// For each it sends one request to the worker, which runs the loop, and
// prints one JSON line: the worker's {count, seconds, first, last} plus
// "wall", the seconds this process measured around the request (from the
// moment it was sent until the whole answer was read). Miniflare's start-up
// is not in any of them. Stops at the end of stdin.
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import { Miniflare } from "miniflare";

const here = new URL(".", import.meta.url);
const COMPATIBILITY_DATE = "2026-04-01";
const { values: options } = parseArgs({
  options: { storage: { type: "string", default: "memory" } },
});
if (options.storage !== "memory" && options.storage !== "disk") {
  throw new Error("--storage must be memory or disk");
}

function packageVersion(name) {
  const path = new URL(`node_modules/${name}/package.json`, here);
  return JSON.parse(readFileSync(path, "utf8")).version;
}

const mf = new Miniflare({
  modules: true,
  scriptPath: new URL("worker.mjs", here).pathname,
  compatibilityDate: COMPATIBILITY_DATE,
  durableObjects: { COUNTER: { className: "Counter", useSQLite: true } },
  unsafeEphemeralDurableObjects: options.storage === "memory",
});
await mf.ready;

function print(value) {
  process.stdout.write(JSON.stringify(value) + "\n");
}

print({
  ready: true,
  node: process.version,
  miniflare: packageVersion("miniflare"),
  workerd: packageVersion("workerd"),
  compatibility_date: COMPATIBILITY_DATE,
  storage: `sqlite, ${options.storage}`,
});

const lines = createInterface({ input: process.stdin });
try {
  for await (const line of lines) {
    if (!line.trim()) continue;
    const { op, seconds } = JSON.parse(line);
    const url = `http://localhost/?op=${op}&seconds=${seconds}`;
    const start = performance.now();
    const response = await mf.dispatchFetch(url);
    const text = await response.text();
    const wall = (performance.now() - start) / 1000;
    if (!response.ok) {
      print({ error: `HTTP ${response.status}: ${text}` });
      continue;
    }
    print({ ...JSON.parse(text), wall });
  }
} finally {
  await mf.dispose();
}
