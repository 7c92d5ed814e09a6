//! `slipway-engine` on its own, for development and tests. Images ship the init's multi-call
//! binary under this name instead (see `slipway_engine::cli`).

fn main() -> std::process::ExitCode {
    slipway_engine::cli::main()
}
