//! The commands rcache answers over RESP, as `COMMAND`, `COMMAND INFO`,
//! `COMMAND DOCS` and `COMMAND COUNT` report them: Redis's arity (negative:
//! at least that many words), flags and key positions, so a client library
//! that reads the table routes and validates as it would against Redis.

use super::Answer;
use bytes::Bytes;

/// One command's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Info {
    pub name: &'static str,
    /// The number of words, the name included; negative: at least that many.
    pub arity: i64,
    pub flags: &'static [&'static str],
    /// The first key's position, the last's (negative: from the end), the step.
    pub keys: (i64, i64, i64),
    pub group: &'static str,
    /// The Redis version that introduced it.
    pub since: &'static str,
    pub summary: &'static str,
}

const fn c(
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    keys: (i64, i64, i64),
    group: &'static str,
    since: &'static str,
    summary: &'static str,
) -> Info {
    Info {
        name,
        arity,
        flags,
        keys,
        group,
        since,
        summary,
    }
}

/// Every command rcache answers over RESP, sorted by name.
#[rustfmt::skip]
pub const TABLE: &[Info] = &[
    c("append", 3, &["write", "denyoom", "fast"], (1, 1, 1), "string", "2.0.0", "Appends a string to the value of a key. Creates the key if it doesn't exist."),
    c("auth", -2, &["noscript", "loading", "stale", "fast", "no_auth"], (0, 0, 0), "connection", "1.0.0", "Authenticates the connection."),
    c("client", -2, &["noscript", "loading", "stale"], (0, 0, 0), "connection", "2.4.0", "A container for client connection commands."),
    c("command", -1, &["loading", "stale"], (0, 0, 0), "server", "2.8.13", "Returns detailed information about all commands."),
    c("config", -2, &["admin", "noscript", "loading", "stale"], (0, 0, 0), "server", "2.0.0", "A container for server configuration commands."),
    c("copy", -3, &["write", "denyoom"], (1, 2, 1), "generic", "6.2.0", "Copies the value of a key to a new key."),
    c("dbsize", 1, &["readonly", "fast"], (0, 0, 0), "server", "1.0.0", "Returns the number of keys in the database."),
    c("decr", 2, &["write", "denyoom", "fast"], (1, 1, 1), "string", "1.0.0", "Decrements the integer value of a key by one. Uses 0 as initial value if the key doesn't exist."),
    c("decrby", 3, &["write", "denyoom", "fast"], (1, 1, 1), "string", "1.0.0", "Decrements a number from the integer value of a key. Uses 0 as initial value if the key doesn't exist."),
    c("del", -2, &["write"], (1, -1, 1), "generic", "1.0.0", "Deletes one or more keys."),
    c("discard", 1, &["noscript", "loading", "stale", "fast"], (0, 0, 0), "transactions", "2.0.0", "Discards a transaction."),
    c("echo", 2, &["fast"], (0, 0, 0), "connection", "1.0.0", "Returns the given string."),
    c("exec", 1, &["noscript", "loading", "stale"], (0, 0, 0), "transactions", "1.2.0", "Executes all commands in a transaction."),
    c("exists", -2, &["readonly", "fast"], (1, -1, 1), "generic", "1.0.0", "Determines whether one or more keys exist."),
    c("expire", -3, &["write", "fast"], (1, 1, 1), "generic", "1.0.0", "Sets the expiration time of a key in seconds."),
    c("expireat", -3, &["write", "fast"], (1, 1, 1), "generic", "1.2.0", "Sets the expiration time of a key to a Unix timestamp."),
    c("expiretime", 2, &["readonly", "fast"], (1, 1, 1), "generic", "7.0.0", "Returns the expiration time of a key as a Unix timestamp."),
    c("flushall", -1, &["write"], (0, 0, 0), "server", "1.0.0", "Removes all keys from all databases."),
    c("flushdb", -1, &["write"], (0, 0, 0), "server", "1.0.0", "Remove all keys from the current database."),
    c("get", 2, &["readonly", "fast"], (1, 1, 1), "string", "1.0.0", "Returns the string value of a key."),
    c("getdel", 2, &["write", "fast"], (1, 1, 1), "string", "6.2.0", "Returns the string value of a key after deleting the key."),
    c("getex", -2, &["write", "fast"], (1, 1, 1), "string", "6.2.0", "Returns the string value of a key after setting its expiration time."),
    c("getrange", 4, &["readonly"], (1, 1, 1), "string", "2.4.0", "Returns a substring of the string stored at a key."),
    c("getset", 3, &["write", "denyoom", "fast"], (1, 1, 1), "string", "1.0.0", "Returns the previous string value of a key after setting it to a new value."),
    c("hdel", -3, &["write", "fast"], (1, 1, 1), "hash", "2.0.0", "Deletes one or more fields and their values from a hash. Deletes the hash if no fields remain."),
    c("hello", -1, &["noscript", "loading", "stale", "fast", "no_auth"], (0, 0, 0), "connection", "6.0.0", "Handshakes with the Redis server."),
    c("hexists", 3, &["readonly", "fast"], (1, 1, 1), "hash", "2.0.0", "Determines whether a field exists in a hash."),
    c("hget", 3, &["readonly", "fast"], (1, 1, 1), "hash", "2.0.0", "Returns the value of a field in a hash."),
    c("hgetall", 2, &["readonly"], (1, 1, 1), "hash", "2.0.0", "Returns all fields and values in a hash."),
    c("hincrby", 4, &["write", "denyoom", "fast"], (1, 1, 1), "hash", "2.0.0", "Increments the integer value of a field in a hash by a number. Uses 0 as initial value if the field doesn't exist."),
    c("hincrbyfloat", 4, &["write", "denyoom", "fast"], (1, 1, 1), "hash", "2.6.0", "Increments the floating point value of a field by a number. Uses 0 as initial value if the field doesn't exist."),
    c("hkeys", 2, &["readonly"], (1, 1, 1), "hash", "2.0.0", "Returns all fields in a hash."),
    c("hlen", 2, &["readonly", "fast"], (1, 1, 1), "hash", "2.0.0", "Returns the number of fields in a hash."),
    c("hmget", -3, &["readonly", "fast"], (1, 1, 1), "hash", "2.0.0", "Returns the values of all fields in a hash."),
    c("hmset", -4, &["write", "denyoom", "fast"], (1, 1, 1), "hash", "2.0.0", "Sets the values of multiple fields."),
    c("hrandfield", -2, &["readonly"], (1, 1, 1), "hash", "6.2.0", "Returns one or more random fields from a hash."),
    c("hscan", -3, &["readonly"], (1, 1, 1), "hash", "2.8.0", "Iterates over fields and values of a hash."),
    c("hset", -4, &["write", "denyoom", "fast"], (1, 1, 1), "hash", "2.0.0", "Creates or modifies the value of a field in a hash."),
    c("hsetnx", 4, &["write", "denyoom", "fast"], (1, 1, 1), "hash", "2.0.0", "Sets the value of a field in a hash only when the field doesn't exist."),
    c("hstrlen", 3, &["readonly", "fast"], (1, 1, 1), "hash", "3.2.0", "Returns the length of the value of a field."),
    c("hvals", 2, &["readonly"], (1, 1, 1), "hash", "2.0.0", "Returns all values in a hash."),
    c("incr", 2, &["write", "denyoom", "fast"], (1, 1, 1), "string", "1.0.0", "Increments the integer value of a key by one. Uses 0 as initial value if the key doesn't exist."),
    c("incrby", 3, &["write", "denyoom", "fast"], (1, 1, 1), "string", "1.0.0", "Increments the integer value of a key by a number. Uses 0 as initial value if the key doesn't exist."),
    c("incrbyfloat", 3, &["write", "denyoom", "fast"], (1, 1, 1), "string", "2.6.0", "Increment the floating point value of a key by a number. Uses 0 as initial value if the key doesn't exist."),
    c("info", -1, &["loading", "stale"], (0, 0, 0), "server", "1.0.0", "Returns information and statistics about the server."),
    c("keys", 2, &["readonly"], (0, 0, 0), "generic", "1.0.0", "Returns all key names that match a pattern."),
    c("lcs", -3, &["readonly"], (1, 2, 1), "string", "7.0.0", "Finds the longest common substring."),
    c("memory", -2, &[], (0, 0, 0), "server", "4.0.0", "A container for memory diagnostics commands."),
    c("mget", -2, &["readonly", "fast"], (1, -1, 1), "string", "1.0.0", "Atomically returns the string values of one or more keys."),
    c("mset", -3, &["write", "denyoom"], (1, -1, 2), "string", "1.0.1", "Atomically creates or modifies the string values of one or more keys."),
    c("msetnx", -3, &["write", "denyoom"], (1, -1, 2), "string", "1.0.1", "Atomically modifies the string values of one or more keys only when all keys don't exist."),
    c("multi", 1, &["noscript", "loading", "stale", "fast"], (0, 0, 0), "transactions", "1.2.0", "Starts a transaction."),
    c("object", -2, &[], (0, 0, 0), "generic", "2.2.3", "A container for object introspection commands."),
    c("persist", 2, &["write", "fast"], (1, 1, 1), "generic", "2.2.0", "Removes the expiration time of a key."),
    c("pexpire", -3, &["write", "fast"], (1, 1, 1), "generic", "2.6.0", "Sets the expiration time of a key in milliseconds."),
    c("pexpireat", -3, &["write", "fast"], (1, 1, 1), "generic", "2.6.0", "Sets the expiration time of a key to a Unix milliseconds timestamp."),
    c("pexpiretime", 2, &["readonly", "fast"], (1, 1, 1), "generic", "7.0.0", "Returns the expiration time of a key as a Unix milliseconds timestamp."),
    c("ping", -1, &["fast"], (0, 0, 0), "connection", "1.0.0", "Returns the server's liveliness response."),
    c("psetex", 4, &["write", "denyoom"], (1, 1, 1), "string", "2.6.0", "Sets both string value and expiration time in milliseconds of a key. The key is created if it doesn't exist."),
    c("pttl", 2, &["readonly", "fast"], (1, 1, 1), "generic", "2.6.0", "Returns the expiration time in milliseconds of a key."),
    c("quit", -1, &["noscript", "loading", "stale", "fast", "no_auth"], (0, 0, 0), "connection", "1.0.0", "Closes the connection."),
    c("randomkey", 1, &["readonly"], (0, 0, 0), "generic", "1.0.0", "Returns a random key name from the database."),
    c("rename", 3, &["write"], (1, 2, 1), "generic", "1.0.0", "Renames a key and overwrites the destination."),
    c("renamenx", 3, &["write", "fast"], (1, 2, 1), "generic", "1.0.0", "Renames a key only when the target key name doesn't exist."),
    c("scan", -2, &["readonly"], (0, 0, 0), "generic", "2.8.0", "Iterates over the key names in the database."),
    c("select", 2, &["loading", "stale", "fast"], (0, 0, 0), "connection", "1.0.0", "Changes the selected database."),
    c("set", -3, &["write", "denyoom"], (1, 1, 1), "string", "1.0.0", "Sets the string value of a key, ignoring its type. The key is created if it doesn't exist."),
    c("setex", 4, &["write", "denyoom"], (1, 1, 1), "string", "2.0.0", "Sets the string value and expiration time of a key. Creates the key if it doesn't exist."),
    c("setnx", 3, &["write", "denyoom", "fast"], (1, 1, 1), "string", "1.0.0", "Set the string value of a key only when the key doesn't exist."),
    c("setrange", 4, &["write", "denyoom"], (1, 1, 1), "string", "2.2.0", "Overwrites a part of a string value with another by an offset. Creates the key if it doesn't exist."),
    c("strlen", 2, &["readonly", "fast"], (1, 1, 1), "string", "2.2.0", "Returns the length of a string value."),
    c("substr", 4, &["readonly"], (1, 1, 1), "string", "1.0.0", "Returns a substring from a string value."),
    c("time", 1, &["loading", "stale", "fast"], (0, 0, 0), "server", "2.6.0", "Returns the server time."),
    c("touch", -2, &["readonly", "fast"], (1, -1, 1), "generic", "3.2.1", "Returns the number of existing keys out of those specified after updating the time they were last accessed."),
    c("ttl", 2, &["readonly", "fast"], (1, 1, 1), "generic", "1.0.0", "Returns the expiration time in seconds of a key."),
    c("type", 2, &["readonly", "fast"], (1, 1, 1), "generic", "1.0.0", "Determines the type of value stored at a key."),
    c("unlink", -2, &["write", "fast"], (1, -1, 1), "generic", "4.0.0", "Asynchronously deletes one or more keys."),
    c("unwatch", 1, &["noscript", "loading", "stale", "fast"], (0, 0, 0), "transactions", "2.2.0", "Forgets about watched keys of a transaction."),
    c("watch", -2, &["noscript", "loading", "stale", "fast"], (1, -1, 1), "transactions", "2.2.0", "Refused: rcache's transactions do not check keys."),
];

/// The entry of `name` (lowercase), and its index in [`TABLE`].
pub fn find(name: &str) -> Option<usize> {
    TABLE.binary_search_by(|info| info.name.cmp(name)).ok()
}

/// The name of the command at `index` of [`TABLE`].
pub fn name(index: usize) -> Option<&'static str> {
    TABLE.get(index).map(|info| info.name)
}

fn bulk(s: &'static str) -> Answer {
    Answer::Bulk(Bytes::from_static(s.as_bytes()))
}

/// A command's `COMMAND INFO` entry: name, arity, flags, first key, last
/// key, step, ACL categories, tips, key specifications, subcommands.
fn info(info: &Info) -> Answer {
    let (first, last, step) = info.keys;
    Answer::List(vec![
        bulk(info.name),
        Answer::Integer(info.arity),
        Answer::List(info.flags.iter().map(|f| Answer::Status(f)).collect()),
        Answer::Integer(first),
        Answer::Integer(last),
        Answer::Integer(step),
        Answer::List(vec![Answer::Status(acl_category(info.group))]),
        Answer::List(Vec::new()),
        Answer::List(Vec::new()),
        Answer::List(Vec::new()),
    ])
}

fn acl_category(group: &str) -> &'static str {
    match group {
        "string" => "@string",
        "generic" => "@keyspace",
        "connection" => "@connection",
        "transactions" => "@transaction",
        _ => "@admin",
    }
}

/// A command's `COMMAND DOCS` entry.
fn docs(info: &Info) -> Answer {
    Answer::Dict(vec![
        (bulk("summary"), bulk(info.summary)),
        (bulk("since"), bulk(info.since)),
        (bulk("group"), bulk(info.group)),
    ])
}

/// The answer to `COMMAND [COUNT | LIST | INFO name… | DOCS name…]`, or
/// `None` for another subcommand.
pub fn answer(sub: Option<&[u8]>, names: &[Bytes]) -> Option<Answer> {
    let wanted = |names: &[Bytes]| -> Vec<Option<&'static Info>> {
        if names.is_empty() {
            return TABLE.iter().map(Some).collect();
        }
        names
            .iter()
            .map(|n| {
                let lower = String::from_utf8_lossy(n).to_ascii_lowercase();
                find(&lower).map(|i| &TABLE[i])
            })
            .collect()
    };
    Some(match sub {
        None => Answer::List(TABLE.iter().map(info).collect()),
        Some(b"count") => Answer::Integer(TABLE.len() as i64),
        Some(b"list") => Answer::List(TABLE.iter().map(|i| bulk(i.name)).collect()),
        Some(b"info") => Answer::List(
            wanted(names)
                .into_iter()
                .map(|i| i.map_or(Answer::Nil, info))
                .collect(),
        ),
        // Unknown names are left out, as Redis does.
        Some(b"docs") => Answer::Dict(
            wanted(names)
                .into_iter()
                .flatten()
                .map(|i| (bulk(i.name), docs(i)))
                .collect(),
        ),
        Some(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_and_every_name_is_found() {
        for pair in TABLE.windows(2) {
            assert!(
                pair[0].name < pair[1].name,
                "{} before {}",
                pair[0].name,
                pair[1].name
            );
        }
        for (i, info) in TABLE.iter().enumerate() {
            assert_eq!(find(info.name), Some(i));
            assert!(info.arity != 0, "{}", info.name);
        }
        assert_eq!(find("lpush"), None);
    }
}
