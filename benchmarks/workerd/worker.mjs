// The workerd side of benchmarks/workerd.py: one Durable Object class and a
// worker entry that calls it in a sequential loop, timed inside workerd.
import { DurableObject } from "cloudflare:workers";

// The benchmark counter: one read and one write per increment, through the
// KV API of the object's storage (as benchmarks/run.py's Counter does).
export class Counter extends DurableObject {
  async incr() {
    const storage = this.ctx.storage;
    const n = (await storage.get("n")) ?? 0;
    storage.put("n", n + 1);
    return n + 1;
  }

  async ping() {
    return 1;
  }
}

// Calls between two looks at the clock.
const CHUNK = 64;

// GET /?op=incr|ping&seconds=S: await stub[op]() one call after another for
// about S seconds; answers {count, seconds, first, last} (first and last are
// the values the first and last increment returned, which the runner
// checks; null for ping).
// Date.now() only moves forward across I/O in workerd; each call on the stub
// is I/O, so it moves at every look.
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const op = url.searchParams.get("op");
    const seconds = Number(url.searchParams.get("seconds") ?? "1");
    if (op !== "incr" && op !== "ping") {
      return new Response("op must be incr or ping\n", { status: 400 });
    }
    const stub = env.COUNTER.get(env.COUNTER.idFromName("bench"));
    const call = op === "incr" ? () => stub.incr() : () => stub.ping();
    let count = 0;
    let first = null;
    let last = null;
    const start = Date.now();
    const deadline = start + seconds * 1000;
    while (Date.now() < deadline) {
      for (let i = 0; i < CHUNK; i++) {
        last = await call();
      }
      if (op === "incr" && first === null) first = last - CHUNK + 1;
      count += CHUNK;
    }
    const elapsed = (Date.now() - start) / 1000;
    return Response.json({ count, seconds: elapsed, first, last });
  },
};
