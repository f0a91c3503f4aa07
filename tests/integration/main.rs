//! Integration tests: the real `rcluster` binary, real worker processes,
//! real sockets on 127.0.0.1 (or Unix sockets in a temp dir). One test
//! binary, so the suite links once.

mod support;

// The benchmark, for its --quick run; its HTTP client and load generator
// are the tests' too.
#[path = "../../benches/reload/bench/mod.rs"]
mod bench;

mod adopt;
mod balance;
mod bench_quick;
mod check;
mod cli_errors;
mod cluster;
mod compat;
mod config;
mod control;
mod defaults;
mod deploy;
mod docs;
mod drain;
mod envfile;
mod examples;
mod idle;
mod layout;
mod leftovers;
mod library;
mod listen;
mod names;
mod notify;
mod observe;
mod output;
mod probes;
mod proxy;
mod recycle;
mod release;
mod releases;
mod reload;
mod restart;
mod scale;
mod security;
mod servers;
mod stall;
mod start;
mod stop;
mod upgrade;
