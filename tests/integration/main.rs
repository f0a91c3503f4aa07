//! Integration tests: the real `rcluster` binary, real worker processes,
//! real sockets on 127.0.0.1 (or Unix sockets in a temp dir). One test
//! binary, so the suite links once.

mod support;

mod cli_errors;
mod cluster;
mod compat;
mod drain;
mod examples;
mod library;
mod listen;
mod notify;
mod reload;
mod restart;
mod scale;
mod start;
mod stop;
