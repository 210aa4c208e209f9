//! rcache: a distributed in-memory cache.
//!
//! ```text
//!  client ──text/RESP──▶ orchestrator ──link──▶ worker A ◀─refill─┐
//!                          │ placement: key → pair             │  partners
//!                          └──────────────link──▶ worker B ─────┘
//! ```
//!
//! Layers, top to bottom; each uses only the ones below it, never one
//! beside it (`tests/layers.rs` holds the same table and fails on an
//! import against it):
//!
//! | layer | modules | own |
//! |---|---|---|
//! | 1 | `bin/` | argument parsing, exit codes: thin |
//! | 2 | [`cli`], [`fuzzing`] | the `rcache` command (get/set, shell, `local`, bench); the fuzz entry points |
//! | 3 | [`daemon`] | logging, signals, systemd notifications, reload |
//! | 4 | [`config`] | figment: defaults < file < env < flags, validation |
//! | 5 | [`orchestrator`], [`worker`] | the two services: router, placement, pool, health; store, refill, anti-entropy |
//! | 6 | [`client`] | text client, link client, connection pool |
//! | 7 | [`net`] | accept loop, limits, buffered connections, the client drivers |
//! | 8 | [`command`] | the command table: route, writes and metrics label of each command; how each runs against a [`command::Keyspace`] |
//! | 9 | [`metrics`] | Prometheus registries, the `/metrics` and `/health` endpoint |
//! | 10 | [`protocol`] | text, RESP and link codecs: bytes ↔ types, no I/O |
//! | 11 | [`tls`], [`auth`] | rustls configuration; the shared token |
//! | 12 | [`version`], [`hash`], [`zipf`] | hybrid logical clock, stable key hash, skewed keys |
//! | 13 | [`sys`], [`shutdown`], [`join`], [`defaults`], [`clients`] | the one door to sockets, the wall clock and randomness (a simulation swaps it); the shutdown signal; running futures together on one task; every default setting, once; the table of open client connections |
//!
//! A request runs in a straight line: accept, decode a `Command`, execute it
//! (the worker's store; or the orchestrator's router picks a pair and the
//! pool forwards it), encode the `Reply`, write.

#![forbid(unsafe_code)]

pub mod auth;
pub mod cli;
pub mod client;
pub mod clients;
pub mod command;
pub mod config;
pub mod daemon;
pub mod defaults;
pub mod fuzzing;
pub mod hash;
pub mod join;
pub mod metrics;
pub mod net;
pub mod orchestrator;
pub mod placement;
pub mod protocol;
pub mod shutdown;
pub mod sys;
pub mod tls;
pub mod version;
pub mod worker;
pub mod zipf;

pub use client::Client;
