"""Django's RedisCache backend against rcache: run by tests/apps.rs.

Usage: django_cache.py <orchestrator port>

Configures Django's built-in Redis cache (django.core.cache.backends.redis,
which speaks redis-py) at the orchestrator and runs its cache API: every
check raises on a mismatch; the last line says how many passed.
"""

import sys
import time

import django
from django.conf import settings

port = int(sys.argv[1])
settings.configure(
    CACHES={
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{port}",
            "KEY_PREFIX": "app",
            "TIMEOUT": 300,
        }
    }
)
django.setup()

from django.core.cache import cache  # noqa: E402

import redis  # noqa: E402

raw = redis.Redis(port=port)
checks = 0


def check(what, got, want):
    global checks
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")
    checks += 1


cache.clear()
check("clear empties", raw.dbsize(), 0)

# set/get of pickled objects and of integers (stored plain, for incr).
cache.set("user:1", {"name": "ada", "roles": ["admin"]})
check("get a dict", cache.get("user:1"), {"name": "ada", "roles": ["admin"]})
check("get a missing key", cache.get("nobody"), None)
check("get with a default", cache.get("nobody", "fallback"), "fallback")
cache.set("hits", 10)
check("an int is stored as its digits", raw.get("app:1:hits"), b"10")

# add: only when absent.
check("add a new key", cache.add("once", "first"), True)
check("add an existing key", cache.add("once", "second"), False)
check("add kept the first", cache.get("once"), "first")

# incr/decr, and incr of a missing key raises as Django documents.
check("incr", cache.incr("hits"), 11)
check("incr by 5", cache.incr("hits", 5), 16)
check("decr", cache.decr("hits"), 15)
check("decr by 20", cache.decr("hits", 20), -5)
try:
    cache.incr("no-counter")
    raise AssertionError("incr of a missing key did not raise")
except ValueError:
    checks += 1

# set_many (a MULTI/EXEC pipeline of MSET and EXPIREs) and get_many.
data = {f"item:{i}": {"n": i} for i in range(50)}
check("set_many", cache.set_many(data, timeout=120), [])
got = cache.get_many(list(data) + ["missing"])
check("get_many", got, data)
ttl = raw.ttl("app:1:item:7")
check("set_many set the timeout", 100 < ttl <= 120, True)

# delete, delete_many, has_key.
check("has_key", cache.has_key("item:3"), True)
check("delete", cache.delete("item:3"), True)
check("delete a missing key", cache.delete("item:3"), False)
check("has_key after delete", cache.has_key("item:3"), False)
cache.delete_many([f"item:{i}" for i in range(10)])
check(
    "delete_many",
    cache.get_many([f"item:{i}" for i in range(12)]),
    {"item:10": {"n": 10}, "item:11": {"n": 11}},
)

# timeouts: touch extends, None persists, a short one expires.
cache.set("session", "s", timeout=2)
check("touch", cache.touch("session", 600), True)
check("touch set the TTL", 590 < raw.ttl("app:1:session") <= 600, True)
check("touch with None persists", cache.touch("session", None), True)
check("persisted", raw.ttl("app:1:session"), -1)
check("touch of a missing key", cache.touch("nobody", 10), False)
cache.set("short", "gone soon", timeout=1)
time.sleep(1.5)
check("an expired key is gone", cache.get("short"), None)
cache.set("zero", "x", timeout=0)
check("timeout 0 stores nothing", cache.get("zero"), None)

# get_or_set and versions.
check("get_or_set", cache.get_or_set("computed", lambda: 42), 42)
check("get_or_set keeps", cache.get_or_set("computed", lambda: 0), 42)
cache.set("v", "one", version=1)
cache.set("v", "two", version=2)
check(
    "versions are separate keys",
    (cache.get("v", version=1), cache.get("v", version=2)),
    ("one", "two"),
)
check("incr_version", cache.incr_version("v", version=2), 3)
check("moved to version 3", cache.get("v", version=3), "two")

cache.clear()
check("clear", raw.dbsize(), 0)
print(f"django RedisCache: {checks} checks passed")
