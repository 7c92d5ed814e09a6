//! `slipway-swarm simulate`: one process hosts many worker nodes for scale runs. Each simulated
//! node is a whole agent (`Daemon`) of its own: its own key and certificate issued by the
//! swarm's CA through the join token, its own mutual-TLS gRPC connections, heartbeats, session
//! and `Assignments` stream, and the fake executor (`executor::fake`) behind it. So every task
//! goes through the managers' real Raft store, orchestrator, scheduler and dispatcher; only the
//! container is imaginary. Nodes join a few at a time (`--parallel`), then run until SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::agent_tasks::ExecutorKind;
use crate::daemon::{Daemon, JoinRequest, Options};

pub struct Simulation {
    pub join_token: String,
    pub manager: String,
    pub nodes: usize,
    pub parallel: usize,
    pub state: PathBuf,
    pub hostname_prefix: String,
    /// The address the simulated nodes advertise (they listen on nothing: they are workers).
    pub advertise_addr: String,
}

pub async fn run(sim: Simulation) -> anyhow::Result<()> {
    std::fs::create_dir_all(&sim.state)
        .with_context(|| format!("creating {}", sim.state.display()))?;
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let sim = Arc::new(sim);
    let mut joiners = Vec::new();
    for _ in 0..sim.parallel.max(1) {
        let (next, sim) = (next.clone(), sim.clone());
        joiners.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= sim.nodes {
                    return Ok::<_, anyhow::Error>(mine);
                }
                mine.push(join_one(&sim, i).await?);
            }
        }));
    }
    let mut daemons = Vec::new();
    for j in joiners {
        daemons.extend(j.await??);
    }
    tracing::info!(
        "{} simulated nodes joined in {:.1}s",
        daemons.len(),
        started.elapsed().as_secs_f64()
    );
    // The readiness line scripts wait for.
    println!("simulate: {} nodes joined", daemons.len());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

async fn join_one(sim: &Simulation, i: usize) -> anyhow::Result<Daemon> {
    let daemon = Daemon::start(Options {
        state_dir: sim.state.join(format!("n{i}")),
        engine: PathBuf::from("/nonexistent"),
        raft_tick: Duration::from_millis(250),
        hostname: format!("{}{i}", sim.hostname_prefix),
        min_cert_expiry: Duration::from_secs(3600),
        executor: ExecutorKind::Fake,
    })
    .await?;
    // A node resumed from its state directory is in the swarm already.
    if daemon.session().is_some() {
        return Ok(daemon);
    }
    let mut attempt = 0;
    loop {
        let joined = daemon
            .join(JoinRequest {
                listen_addr: "0.0.0.0:2377".into(),
                advertise_addr: sim.advertise_addr.clone(),
                remote_addrs: vec![sim.manager.clone()],
                join_token: sim.join_token.clone(),
                availability: "active".into(),
            })
            .await;
        match joined {
            Ok(()) => return Ok(daemon),
            Err(e) if e.status == 400 || attempt >= 5 => {
                anyhow::bail!("simulated node {i} could not join: {e}")
            }
            Err(e) => {
                tracing::warn!("simulated node {i}: joining: {e}; trying again");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}
