"""redis-py against an rcache orchestrator: run by tests/redis_compat.rs.

Usage: redis_py.py <orchestrator port> <token> <worker port>...

Every check raises on a mismatch; the last line printed says how many
passed. The workers are read directly (with redis-py too) to show that
multi-key commands were split across the pairs.
"""

import sys
import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

port = int(sys.argv[1])
token = sys.argv[2]
workers = [int(p) for p in sys.argv[3:]]
checks = 0


def check(what, got, want):
    global checks
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")
    checks += 1


def raises(what, exc, fn):
    global checks
    try:
        fn()
    except exc as e:
        checks += 1
        return e
    raise AssertionError(f"{what}: no {exc.__name__} raised")


# AUTH: nothing before it, a wrong token is refused, the right one opens.
# Refused connections are not retried (redis-py would back off for seconds).
once = Retry(NoBackoff(), 0)
anon = redis.Redis(port=port, retry=once)
raises("command before AUTH", redis.AuthenticationError, lambda: anon.get("k"))
raises(
    "wrong token",
    redis.AuthenticationError,
    lambda: redis.Redis(port=port, password="wrong", retry=once).ping(),
)
r = redis.Redis(port=port, password=token)
# redis-py 8 asks for RESP3 (HELLO 3); a client that asks for RESP2 gets it.
r2 = redis.Redis(port=port, password=token, protocol=2)
check(
    "RESP2 client",
    (r2.set("resp2", "v"), r2.get("resp2"), r2.get("never-set"), r2.mget("resp2", "never-set")),
    (True, b"v", None, [b"v", None]),
)
check("PING", r.ping(), True)
check("ECHO", r.echo(b"hi"), b"hi")
check("SELECT 0", r.execute_command("SELECT", 0), True)
raises("SELECT 1", redis.ResponseError, lambda: r.execute_command("SELECT", 1))

# Binary-safe strings: NUL, CR, LF, every byte value.
for i, value in enumerate([b"\x00", b"a\r\nb", b"\r\n", bytes(range(256)), b""]):
    check(f"SET binary {i}", r.set(f"bin:{i}", value), True)
    check(f"GET binary {i}", r.get(f"bin:{i}"), value)
binary_key = b"key\x00with\r\nbytes"
r.set(binary_key, b"v")
check("binary key", r.get(binary_key), b"v")
check("missing key", r.get("never-set"), None)

# SET options.
check("SET NX on a new key", r.set("nx", "1", nx=True), True)
check("SET NX on a present key", r.set("nx", "2", nx=True), None)
check("value kept by NX", r.get("nx"), b"1")
check("SET XX on a missing key", r.set("xx", "1", xx=True), None)
check("XX did not create", r.exists("xx"), 0)
r.set("xx", "1")
check("SET XX on a present key", r.set("xx", "2", xx=True), True)
check("value replaced by XX", r.get("xx"), b"2")
check("SETNX", r.setnx("setnx", "a"), True)
check("SETNX again", r.setnx("setnx", "b"), False)
r.set("ex", "v", ex=100)
ttl = r.ttl("ex")
check("TTL after EX 100 in 99..100", 99 <= ttl <= 100, True)
r.set("px", "v", px=50_000)
pttl = r.pttl("px")
check("PTTL after PX 50000 in 49000..50000", 49_000 <= pttl <= 50_000, True)
r.setex("setex", 30, "v")
check("SETEX ttl", 29 <= r.ttl("setex") <= 30, True)
r.set("short", "v", px=300)
time.sleep(0.6)
check("PX 300 expired", r.get("short"), None)
raises("SET EX 0", redis.ResponseError, lambda: r.set("k", "v", ex=0))
e = raises("SET NX XX", redis.ResponseError, lambda: r.execute_command("SET", "k", "v", "NX", "XX"))
check("syntax error text", str(e), "syntax error")

# TTL / EXPIRE / PEXPIRE / PTTL.
r.set("plain", "v")
check("TTL without expiry", r.ttl("plain"), -1)
check("TTL of a missing key", r.ttl("never-set"), -2)
check("PTTL of a missing key", r.pttl("never-set"), -2)
check("EXPIRE", r.expire("plain", 60), True)
check("TTL after EXPIRE", 59 <= r.ttl("plain") <= 60, True)
check("PEXPIRE", r.pexpire("plain", 200), True)
time.sleep(0.5)
check("PEXPIRE expired the key", r.get("plain"), None)
check("EXPIRE on a missing key", r.expire("never-set", 10), False)
r.set("gone", "v")
check("EXPIRE in the past deletes", r.expire("gone", -1), True)
check("deleted by EXPIRE -1", r.exists("gone"), 0)

# MSET / MGET across pairs, DEL / EXISTS with many keys.
many = {f"multi:{i}": f"value:{i}".encode() for i in range(200)}
check("MSET 200 keys", r.mset(many), True)
keys = list(many) + ["multi:missing"]
check("MGET in order", r.mget(keys), list(many.values()) + [None])
check("EXISTS counts every key named", r.exists(*keys, "multi:0"), 201)
per_worker = [redis.Redis(port=w, password=token).dbsize() for w in workers]
check(
    "every worker holds a share of the keys (split across pairs)",
    all(n > 0 for n in per_worker),
    True,
)
check("DBSIZE through the orchestrator", r.dbsize() >= 200, True)
check("DEL 200 keys and a missing one", r.delete(*keys), 200)
check("EXISTS after DEL", r.exists(*keys), 0)
check("MGET after DEL", r.mget(keys[:3]), [None, None, None])

# Pipelines of 1,000 commands, answered in order.
pipe = r.pipeline(transaction=False)
for i in range(1000):
    pipe.set(f"pipe:{i}", f"v{i}")
check("pipelined SETs", pipe.execute(), [True] * 1000)
pipe = r.pipeline(transaction=False)
for i in range(1000):
    pipe.get(f"pipe:{i}")
check("pipelined GETs", pipe.execute(), [f"v{i}".encode() for i in range(1000)])
pipe = r.pipeline(transaction=False)
for i in range(500):
    pipe.set(f"order:{i % 10}", i)
    pipe.get(f"order:{i % 10}")
results = pipe.execute()
check(
    "a pipelined GET sees the SET before it",
    [int(v) for v in results[1::2]],
    list(range(500)),
)

# Hashes, as redis-py's own commands send and parse them.
check("HSET mapping", r.hset("user:1", mapping={"name": "ada", "visits": 1, "lang": "en"}), 3)
check("HSET one field", r.hset("user:1", "lang", "fr"), 0)
check("HGET", r.hget("user:1", "name"), b"ada")
check("HGET missing field", r.hget("user:1", "nope"), None)
check("HMGET", r.hmget("user:1", ["name", "nope", "lang"]), [b"ada", None, b"fr"])
check("HGETALL", r.hgetall("user:1"), {b"name": b"ada", b"visits": b"1", b"lang": b"fr"})
check("HINCRBY", r.hincrby("user:1", "visits", 41), 42)
check("HINCRBYFLOAT", r.hincrbyfloat("user:1", "score", 2.5), 2.5)
check("HSETNX of a set field", r.hsetnx("user:1", "name", "bob"), False)
check("HSETNX of a new field", r.hsetnx("user:1", "email", "a@b"), True)
check("HEXISTS", r.hexists("user:1", "email"), True)
check("HLEN", r.hlen("user:1"), 5)
check("HKEYS", sorted(r.hkeys("user:1")), [b"email", b"lang", b"name", b"score", b"visits"])
check("HSTRLEN", r.hstrlen("user:1", "name"), 3)
check("HSCAN_ITER", dict(r.hscan_iter("user:1", match="e*")), {b"email": b"a@b"})
check("HDEL", r.hdel("user:1", "email", "nope"), 1)
check("HRANDFIELD count", len(r.hrandfield("user:1", 3)), 3)
check("TYPE of a hash", r.type("user:1"), b"hash")
e = raises("GET of a hash", redis.ResponseError, lambda: r.get("user:1"))
check("WRONGTYPE text", str(e), "WRONGTYPE Operation against a key holding the wrong kind of value")
pipe = r.pipeline(transaction=True)
pipe.hset("user:2", "a", 1)
pipe.hincrby("user:2", "a", 2)
pipe.hgetall("user:2")
check("hashes in a transaction", pipe.execute(), [1, 3, {b"a": b"3"}])
check("DEL of a hash", r.delete("user:1", "user:2"), 2)
check("HGETALL of a deleted hash", r.hgetall("user:1"), {})

# Errors come back as Redis words them, and the connection stays usable.
e = raises("unknown command", redis.ResponseError, lambda: r.execute_command("NOSUCH", "a"))
check("unknown command text", str(e).startswith("unknown command 'NOSUCH'"), True)
e = raises("wrong arity", redis.ResponseError, lambda: r.execute_command("GET"))
check("arity text", str(e), "wrong number of arguments for 'get' command")
check("usable after errors", r.ping(), True)
info = r.info()
check("INFO parses", info["redis_mode"], "standalone")

print(f"redis-py {redis.__version__}: {checks} checks passed")
