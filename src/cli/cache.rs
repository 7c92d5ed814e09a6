//! `slipway cache`: the local content-addressed image store.

use super::Global;

#[derive(clap::Subcommand, Debug)]
pub enum Command {}

pub fn run(cmd: Command, _global: &Global) -> anyhow::Result<()> {
    match cmd {}
}
