//! The swarm agent (pkg/swarm), when the image carries it after the engine
//! (`init: [.., @pkg:../pkg/engine, @pkg:../pkg/swarm]`): the init starts `slipway-swarm daemon`
//! right after the engine and supervises it as it does the engine (restarts with a backoff,
//! adoption after a re-execution, SIGTERM at shutdown before the engine stops).
//!
//! Its settings are two files, the metadata's winning key by key (see pkg/swarm's settings.rs):
//! the image's own (`files:`) and the one the metadata package writes from a `cidata` CD or a
//! cloud's userdata (`{"swarm": {"entries": {"swarm.yml": {"content": "..."}}}}`). Its state is
//! its default directory, /var/lib/slipway/swarm, where an image mounts its persistent disk.

use crate::engine::Program;

/// Where the swarm package puts the agent.
pub const AGENT: &str = "/usr/bin/slipway-swarm";
/// The image's settings (`files:`).
pub const IMAGE_SETTINGS: &str = "/etc/slipway/swarm.yml";
/// The metadata's settings (pkg/metadata writes /run/config).
pub const METADATA_SETTINGS: &str = "/run/config/swarm/swarm.yml";

/// How long the agent may take to stop (it closes its sockets and Raft store).
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

pub fn program() -> Program {
    Program {
        name: "swarm agent",
        path: AGENT,
        args: [
            "daemon",
            "--config",
            IMAGE_SETTINGS,
            "--config",
            METADATA_SETTINGS,
        ]
        .map(String::from)
        .to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metadata_settings_come_last_so_they_win() {
        let args = program().args;
        let image = args.iter().position(|a| a == IMAGE_SETTINGS).unwrap();
        let metadata = args.iter().position(|a| a == METADATA_SETTINGS).unwrap();
        assert_eq!(args[0], "daemon");
        assert!(image < metadata);
    }
}
