//! rcache: a distributed in-memory cache.
//!
//! ```text
//!  client ──text/RESP──▶ orchestrator ──link──▶ worker A ◀─refill─┐
//!                          │ placement: key → pair             │  partners
//!                          └──────────────link──▶ worker B ─────┘
//! ```
//!
//! Layers, top to bottom; each uses only the ones below it:
//!
//! | module | owns |
//! |---|---|
//! | `bin/` | argument parsing, exit codes: thin |
//! | [`cli`] | the `rcache` command: get/set/del/ping, shell, `local` |
//! | [`worker`] | listener, store (shards, SIEVE eviction, TTLs, lz4), refill |
//! | [`orchestrator`] | listener, placement (key → pair), pool of links, health |
//! | [`client`] | text client, link client |
//! | [`metrics`] | Prometheus registries, the `/metrics` and `/health` endpoint |
//! | [`net`] | accept loop, limits, shutdown, buffered connections, text driver |
//! | [`protocol`] | text and link codecs: bytes ↔ types, no I/O |
//!
//! [`config`] (figment: defaults < file < env < flags) and [`daemon`]
//! (logging, signals, systemd notifications, reload) are used from the top. [`version`] (hybrid logical
//! clock), [`hash`] (the stable key hash) and [`zipf`] are leaf utilities;
//! [`sys`] is the one door to sockets, the wall clock and randomness (a
//! simulation swaps it).
//!
//! A request runs in a straight line: accept, decode a `Command`, execute it
//! (the worker's store; or the orchestrator's router picks a pair and the
//! pool forwards it), encode the `Reply`, write.

pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod hash;
pub mod metrics;
pub mod net;
pub mod orchestrator;
pub mod protocol;
pub mod sys;
pub mod tls;
pub mod version;
pub mod worker;
pub mod zipf;

pub use client::Client;
