//! `format` on its own, for development and tests; images run the init's multi-call binary by
//! this name (see `slipway_disk::command`).

fn main() -> std::process::ExitCode {
    slipway_disk::command::main()
}
