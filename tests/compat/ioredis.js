// ioredis (npm) against rcache: run by tests/apps.rs.
//
// Usage: node ioredis.js <orchestrator port>
//
// Connects as an application does (the ready check reads INFO, the
// connection name goes out as CLIENT SETNAME) and runs strings, counters,
// TTLs, pipelines, MULTI/EXEC, SCAN streams and binary values. Every check
// throws on a mismatch; the last line says how many passed.
"use strict";

const assert = require("node:assert/strict");
const Redis = require("ioredis");

const port = Number(process.argv[2]);
let checks = 0;

function check(what, got, want) {
  assert.deepStrictEqual(got, want, what);
  checks += 1;
}

async function main() {
  const redis = new Redis({
    port,
    host: "127.0.0.1",
    connectionName: "ioredis-test",
    maxRetriesPerRequest: 0,
    enableOfflineQueue: false,
    lazyConnect: true,
  });
  await redis.connect();
  check("ready", redis.status, "ready");
  check("flushdb", await redis.flushdb(), "OK");

  const list = await redis.client("LIST");
  check(
    "the connection name is listed",
    list.split("\n").some((l) => l.includes(" name=ioredis-test ")),
    true,
  );

  check("set", await redis.set("greeting", "hello"), "OK");
  check("get", await redis.get("greeting"), "hello");
  check("get a missing key", await redis.get("nobody"), null);
  check("set NX of an existing key", await redis.set("greeting", "x", "NX"), null);
  check("set EX", await redis.set("session", "s", "EX", 60), "OK");
  const ttl = await redis.ttl("session");
  check("ttl", ttl > 55 && ttl <= 60, true);
  check("expire", await redis.expire("greeting", 100), 1);
  check("persist", await redis.persist("greeting"), 1);
  check("ttl after persist", await redis.ttl("greeting"), -1);

  check("incr", await redis.incr("counter"), 1);
  check("incrby", await redis.incrby("counter", 41), 42);
  check("decrby", await redis.decrby("counter", 2), 40);
  check("incrbyfloat", await redis.incrbyfloat("float", "2.5"), "2.5");
  check("append", await redis.append("greeting", " world"), 11);
  check("strlen", await redis.strlen("greeting"), 11);
  check("getrange", await redis.getrange("greeting", 0, 4), "hello");

  check("mset", await redis.mset({ a: "1", b: "2", c: "3" }), "OK");
  check("mget", await redis.mget("a", "b", "nobody", "c"), ["1", "2", null, "3"]);
  check("exists", await redis.exists("a", "b", "nobody"), 2);
  check("del", await redis.del("a", "nobody"), 1);
  check("type", await redis.type("b"), "string");

  // Binary values survive as Buffers.
  const bytes = Buffer.from([0, 255, 13, 10, 42, 0]);
  check("set a Buffer", await redis.set("binary", bytes), "OK");
  check("getBuffer", await redis.getBuffer("binary"), bytes);

  // A pipeline: many commands in one write, answered in order.
  const pipeline = redis.pipeline();
  for (let i = 0; i < 200; i++) pipeline.set(`item:${i}`, `v${i}`);
  for (let i = 0; i < 200; i++) pipeline.get(`item:${i}`);
  const results = await pipeline.exec();
  check("pipeline errors", results.filter(([err]) => err).length, 0);
  check(
    "pipeline order",
    results.slice(200).map(([, v]) => v),
    Array.from({ length: 200 }, (_, i) => `v${i}`),
  );

  // MULTI/EXEC: queued, then run in order.
  const tx = await redis.multi().incr("counter").set("flag", "on").get("flag").exec();
  check("multi/exec", tx, [
    [null, 41],
    [null, "OK"],
    [null, "on"],
  ]);

  // A SCAN stream over the whole cluster sees every key once.
  const seen = new Set();
  await new Promise((resolve, reject) => {
    const stream = redis.scanStream({ match: "item:*", count: 50 });
    stream.on("data", (keys) => keys.forEach((k) => seen.add(k)));
    stream.on("end", resolve);
    stream.on("error", reject);
  });
  check("scanStream", seen.size, 200);
  check("keys", (await redis.keys("item:1?")).length, 10);
  check("dbsize", await redis.dbsize(), 200 + 8);

  // Hashes: ioredis turns HGETALL's array into an object.
  check("hset", await redis.hset("session:1", { user: "ada", hits: 1 }), 2);
  check("hincrby", await redis.hincrby("session:1", "hits", 9), 10);
  check("hgetall", await redis.hgetall("session:1"), { user: "ada", hits: "10" });
  check("hmget", await redis.hmget("session:1", "user", "none"), ["ada", null]);
  check("hdel", await redis.hdel("session:1", "hits"), 1);
  check("hlen", await redis.hlen("session:1"), 1);
  check("type hash", await redis.type("session:1"), "hash");
  await assert.rejects(redis.get("session:1"), /WRONGTYPE Operation against a key holding the wrong kind of value/);
  checks += 1;
  check("del hash", await redis.del("session:1"), 1);

  // An error reply rejects the promise with Redis's words.
  await assert.rejects(redis.incr("greeting"), /ERR value is not an integer or out of range/);
  checks += 1;

  check("flushdb", await redis.flushdb(), "OK");
  check("dbsize after flushdb", await redis.dbsize(), 0);
  check("quit", await redis.quit(), "OK");
  console.log(`ioredis: ${checks} checks passed`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
