//! `cargo bench --bench reload [-- OPTIONS]`: what happens to traffic while
//! rcluster reloads, restarts crashed workers, and scales. See
//! `bench/mod.rs` for the scenarios and `--help` for the options.

mod bench;

fn main() -> std::process::ExitCode {
    bench::main()
}
