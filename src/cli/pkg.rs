//! `slipway pkg`: package folders into OCI images.

use super::Global;

#[derive(clap::Subcommand, Debug)]
pub enum Command {}

pub fn run(cmd: Command, _global: &Global) -> anyhow::Result<()> {
    match cmd {}
}
