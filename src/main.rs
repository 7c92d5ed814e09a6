//! The `slipway` command: a thin layer over the library (see `cli/`).

fn main() -> std::process::ExitCode {
    slipway::cli::main()
}
