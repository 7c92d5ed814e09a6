//! `mountie` on its own, for development and tests; images run the init's multi-call binary by
//! this name (see the library).

fn main() -> std::process::ExitCode {
    slipway_mountie::main()
}
