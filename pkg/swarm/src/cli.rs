//! The agent's command line: `daemon`, and the client verbs with Docker's names and flags
//! (`init`, `join`, `join-token`, `leave`, `update`, `node ...`), each one request (or a few) to
//! the daemon's Docker Engine API on its socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

pub const DEFAULT_STATE: &str = "/var/lib/slipway/swarm";
pub const DEFAULT_SOCKET: &str = "/run/slipway/swarm.sock";
pub const DEFAULT_ENGINE: &str = "/run/slipway/engine.sock";

#[derive(Parser)]
#[command(
    name = "slipway-swarm",
    version,
    about = "Slipway's swarm agent: Docker swarm mode's cluster behind the Docker Engine API"
)]
pub struct Cli {
    /// The daemon's API socket.
    #[arg(long, global = true, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Verb,
}

// Parsed once per run: the size of the largest verb does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum Verb {
    /// Run the agent.
    Daemon {
        #[arg(long, default_value = DEFAULT_STATE)]
        state: PathBuf,
        #[arg(long, default_value = DEFAULT_ENGINE)]
        engine: PathBuf,
        /// Length of a Raft tick in milliseconds: the leader's heartbeat is one tick, elections
        /// start 1.5 to 2 × ElectionTick (10) ticks after it. SwarmKit ticks every second
        /// (elections in 10-20 s); a quarter second elects a new leader in 3.75-5 s.
        #[arg(long, default_value_t = 250)]
        raft_tick: u64,
        /// The node's hostname (default: the host's).
        #[arg(long)]
        hostname: Option<String>,
        /// The shortest certificate validity the cluster accepts (Docker: 1h; shorter for tests).
        #[arg(long, default_value = "1h")]
        min_cert_expiry: humantime::Duration,
        /// Settings files (YAML; see settings.rs), later ones winning: `init` or `join` on the
        /// first start, addresses, availability, hostname. Missing files are skipped.
        #[arg(long)]
        config: Vec<PathBuf>,
        /// What runs this node's tasks: containers through the engine, or nothing (`fake`: tasks
        /// run at once; for tests and scale runs).
        #[arg(long, value_enum, default_value_t = crate::agent_tasks::ExecutorKind::Engine)]
        executor: crate::agent_tasks::ExecutorKind,
    },
    /// Scale runs: many simulated worker nodes in this one process, each joining the swarm with
    /// its own certificate and session, running its tasks with the fake executor (README).
    Simulate {
        /// The worker join token.
        #[arg(long)]
        join: String,
        /// A manager's address (host:port).
        #[arg(long)]
        manager: String,
        #[arg(long, default_value_t = 100)]
        nodes: usize,
        /// How many nodes join at the same time.
        #[arg(long, default_value_t = 16)]
        parallel: usize,
        /// Where the simulated nodes keep their state (one directory each).
        #[arg(long, default_value = "/var/lib/slipway-swarm-sim")]
        state: PathBuf,
        #[arg(long, default_value = "sim-")]
        hostname_prefix: String,
        /// The address the nodes advertise (default: the one their packets leave from).
        #[arg(long, default_value = "")]
        advertise_addr: String,
    },
    /// Create a swarm with this node as its first manager.
    Init {
        #[arg(long, default_value = "")]
        advertise_addr: String,
        #[arg(long, default_value = "0.0.0.0:2377")]
        listen_addr: String,
        #[arg(long)]
        force_new_cluster: bool,
        #[arg(long, default_value = "active")]
        availability: String,
        /// Heartbeat period (e.g. 5s, 500ms).
        #[arg(long)]
        dispatcher_heartbeat: Option<humantime::Duration>,
        /// Validity of node certificates (e.g. 2160h).
        #[arg(long)]
        cert_expiry: Option<humantime::Duration>,
        /// Lock managers: their keys are sealed with an unlock key needed after a restart.
        #[arg(long)]
        autolock: bool,
    },
    /// Join a swarm as a node and/or manager.
    Join {
        #[arg(long, default_value = "")]
        token: String,
        #[arg(long, default_value = "")]
        advertise_addr: String,
        #[arg(long, default_value = "0.0.0.0:2377")]
        listen_addr: String,
        #[arg(long, default_value = "active")]
        availability: String,
        /// A manager's address, HOST[:PORT].
        remote: String,
    },
    /// Manage join tokens.
    JoinToken {
        #[arg(long)]
        rotate: bool,
        #[arg(short, long)]
        quiet: bool,
        /// worker or manager
        role: String,
    },
    /// Leave the swarm.
    Leave {
        #[arg(short, long)]
        force: bool,
    },
    /// Update the swarm.
    Update {
        #[arg(long)]
        dispatcher_heartbeat: Option<humantime::Duration>,
        #[arg(long)]
        cert_expiry: Option<humantime::Duration>,
        /// Turn autolock on or off (`--autolock` alone: on).
        #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
        autolock: Option<bool>,
    },
    /// Unlock a locked manager: the unlock key is read from standard input.
    Unlock,
    /// Show (or rotate) the unlock key.
    UnlockKey {
        #[arg(long)]
        rotate: bool,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Manage swarm nodes.
    #[command(subcommand)]
    Node(NodeVerb),
    /// Manage services.
    #[command(subcommand)]
    Service(crate::cli_services::ServiceVerb),
    /// Manage secrets.
    #[command(subcommand)]
    Secret(crate::cli_services::FileVerb),
    /// Manage configs.
    #[command(subcommand)]
    Config(crate::cli_services::FileVerb),
}

#[derive(Subcommand)]
pub enum NodeVerb {
    /// List nodes.
    Ls {
        /// `json` (one object a line) or the default table.
        #[arg(long)]
        format: Option<String>,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Display detailed information on nodes.
    Inspect { nodes: Vec<String> },
    /// Promote nodes to managers.
    Promote { nodes: Vec<String> },
    /// Demote managers to workers.
    Demote { nodes: Vec<String> },
    /// Remove nodes.
    Rm {
        #[arg(short, long)]
        force: bool,
        nodes: Vec<String>,
    },
    /// Update a node.
    Update {
        #[arg(long)]
        availability: Option<String>,
        #[arg(long)]
        label_add: Vec<String>,
        #[arg(long)]
        label_rm: Vec<String>,
        #[arg(long)]
        role: Option<String>,
        node: String,
    },
}

/// One request to the daemon; the status and the body's JSON (Null when empty).
pub async fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting to the swarm agent at {}", socket.display()))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let request = hyper::Request::builder()
        .method(method)
        .uri(format!("http://localhost/v1.41{path}"))
        .header("Host", "localhost")
        .header("Content-Type", "application/json")
        .body(Full::new(bytes))?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    let value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .unwrap_or(Value::String(String::from_utf8_lossy(&body).into_owned()))
    };
    Ok((status, value))
}

pub(crate) async fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let (status, value) = request(socket, method, path, body).await?;
    if status >= 400 {
        let message = value
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| value.to_string());
        bail!("Error response from daemon: {message}");
    }
    Ok(value)
}

fn nanos(d: Option<humantime::Duration>) -> Option<i64> {
    d.map(|d| Duration::from(d).as_nanos() as i64)
}

pub async fn run(socket: &Path, verb: Verb) -> anyhow::Result<()> {
    match verb {
        Verb::Daemon { .. } | Verb::Simulate { .. } => {
            unreachable!("the daemon and simulate are started by main")
        }
        Verb::Service(verb) => crate::cli_services::service(socket, verb).await?,
        Verb::Secret(verb) => crate::cli_services::file(socket, "secrets", verb).await?,
        Verb::Config(verb) => crate::cli_services::file(socket, "configs", verb).await?,
        Verb::Init {
            advertise_addr,
            listen_addr,
            force_new_cluster,
            availability,
            dispatcher_heartbeat,
            cert_expiry,
            autolock,
        } => {
            let mut spec = json!({});
            if let Some(p) = nanos(dispatcher_heartbeat) {
                spec["Dispatcher"] = json!({"HeartbeatPeriod": p});
            }
            if let Some(e) = nanos(cert_expiry) {
                spec["CAConfig"] = json!({"NodeCertExpiry": e});
            }
            let body = json!({"ListenAddr": listen_addr, "AdvertiseAddr": advertise_addr, "ForceNewCluster": force_new_cluster, "Spec": spec, "Availability": availability, "AutoLockManagers": autolock});
            let node_id = call(socket, "POST", "/swarm/init", Some(body)).await?;
            let swarm = call(socket, "GET", "/swarm", None).await?;
            println!(
                "Swarm initialized: current node ({}) is now a manager.\n",
                node_id.as_str().unwrap_or_default()
            );
            let info = call(socket, "GET", "/info", None).await?;
            let addr = info["Swarm"]["RemoteManagers"][0]["Addr"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            println!("To add a worker to this swarm, run the following command:\n");
            println!(
                "    slipway-swarm join --token {} {addr}\n",
                swarm["JoinTokens"]["Worker"].as_str().unwrap_or_default()
            );
            if autolock {
                print_unlock_key(socket).await?;
            }
        }
        Verb::Join {
            token,
            advertise_addr,
            listen_addr,
            availability,
            remote,
        } => {
            let body = json!({"ListenAddr": listen_addr, "AdvertiseAddr": advertise_addr, "RemoteAddrs": [remote], "JoinToken": token, "Availability": availability});
            call(socket, "POST", "/swarm/join", Some(body)).await?;
            let info = call(socket, "GET", "/info", None).await?;
            if info["Swarm"]["ControlAvailable"].as_bool() == Some(true) {
                println!("This node joined a swarm as a manager.");
            } else {
                println!("This node joined a swarm as a worker.");
            }
        }
        Verb::JoinToken {
            rotate,
            quiet,
            role,
        } => {
            let key = match role.as_str() {
                "worker" => "Worker",
                "manager" => "Manager",
                _ => bail!("unknown role {role}"),
            };
            if rotate {
                let swarm = call(socket, "GET", "/swarm", None).await?;
                let version = swarm["Version"]["Index"].as_u64().unwrap_or(0);
                let flag = if key == "Worker" {
                    "rotateWorkerToken"
                } else {
                    "rotateManagerToken"
                };
                call(
                    socket,
                    "POST",
                    &format!("/swarm/update?version={version}&{flag}=true"),
                    Some(swarm["Spec"].clone()),
                )
                .await?;
                if !quiet {
                    println!("Successfully rotated {role} join token.\n");
                }
            }
            let swarm = call(socket, "GET", "/swarm", None).await?;
            let token = swarm["JoinTokens"][key]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if quiet {
                println!("{token}");
            } else {
                let info = call(socket, "GET", "/info", None).await?;
                let addr = info["Swarm"]["RemoteManagers"][0]["Addr"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                println!(
                    "To add a {role} to this swarm, run the following command:\n\n    slipway-swarm join --token {token} {addr}\n"
                );
            }
        }
        Verb::Leave { force } => {
            call(socket, "POST", &format!("/swarm/leave?force={force}"), None).await?;
            println!("Node left the swarm.");
        }
        Verb::Update {
            dispatcher_heartbeat,
            cert_expiry,
            autolock,
        } => {
            let swarm = call(socket, "GET", "/swarm", None).await?;
            let version = swarm["Version"]["Index"].as_u64().unwrap_or(0);
            let mut spec = swarm["Spec"].clone();
            if let Some(p) = nanos(dispatcher_heartbeat) {
                spec["Dispatcher"]["HeartbeatPeriod"] = json!(p);
            }
            if let Some(e) = nanos(cert_expiry) {
                spec["CAConfig"]["NodeCertExpiry"] = json!(e);
            }
            let was_locked = spec["EncryptionConfig"]["AutoLockManagers"] == true;
            if let Some(on) = autolock {
                spec["EncryptionConfig"]["AutoLockManagers"] = json!(on);
            }
            call(
                socket,
                "POST",
                &format!("/swarm/update?version={version}"),
                Some(spec),
            )
            .await?;
            println!("Swarm updated.");
            if autolock == Some(true) && !was_locked {
                print_unlock_key(socket).await?;
            }
        }
        Verb::Unlock => {
            let info = call(socket, "GET", "/info", None).await?;
            match info["Swarm"]["LocalNodeState"].as_str() {
                Some("locked") => {}
                Some("inactive") => bail!("Error: This node is not part of a swarm"),
                _ => bail!("Error: swarm is not locked"),
            }
            let key = crate::autolock::read_unlock_key()?;
            call(
                socket,
                "POST",
                "/swarm/unlock",
                Some(json!({"UnlockKey": key})),
            )
            .await?;
        }
        Verb::UnlockKey { rotate, quiet } => {
            if rotate {
                let swarm = call(socket, "GET", "/swarm", None).await?;
                if swarm["Spec"]["EncryptionConfig"]["AutoLockManagers"] != true {
                    bail!("cannot rotate because autolock is not turned on");
                }
                let version = swarm["Version"]["Index"].as_u64().unwrap_or(0);
                call(
                    socket,
                    "POST",
                    &format!("/swarm/update?version={version}&rotateManagerUnlockKey=true"),
                    Some(swarm["Spec"].clone()),
                )
                .await?;
                if !quiet {
                    println!("Successfully rotated manager unlock key.\n");
                }
            }
            let key = call(socket, "GET", "/swarm/unlockkey", None)
                .await
                .context("could not fetch unlock key")?;
            let key = key["UnlockKey"].as_str().unwrap_or_default().to_string();
            if key.is_empty() {
                bail!("no unlock key is set");
            }
            if quiet {
                println!("{key}");
            } else {
                print_unlock_command(&key);
            }
        }
        Verb::Node(verb) => node(socket, verb).await?,
    }
    Ok(())
}

fn print_unlock_command(key: &str) {
    println!(
        "To unlock a swarm manager after it restarts, run the `slipway-swarm unlock`\ncommand and provide the following key:\n\n    {key}\n\nRemember to store this key in a password manager, since without it you\nwill not be able to restart the manager."
    );
}

async fn print_unlock_key(socket: &Path) -> anyhow::Result<()> {
    let key = call(socket, "GET", "/swarm/unlockkey", None)
        .await
        .context("could not fetch unlock key")?;
    print_unlock_command(key["UnlockKey"].as_str().unwrap_or_default());
    Ok(())
}

async fn update_node(
    socket: &Path,
    key: &str,
    change: impl FnOnce(&mut Value) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let node = call(socket, "GET", &format!("/nodes/{key}"), None).await?;
    let version = node["Version"]["Index"].as_u64().unwrap_or(0);
    let id = node["ID"].as_str().unwrap_or_default().to_string();
    let mut spec = node["Spec"].clone();
    change(&mut spec)?;
    call(
        socket,
        "POST",
        &format!("/nodes/{id}/update?version={version}"),
        Some(spec),
    )
    .await?;
    Ok(())
}

async fn node(socket: &Path, verb: NodeVerb) -> anyhow::Result<()> {
    match verb {
        NodeVerb::Ls { format, quiet } => {
            let nodes = call(socket, "GET", "/nodes", None).await?;
            let info = call(socket, "GET", "/info", None).await?;
            let me = info["Swarm"]["NodeID"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let rows: Vec<Value> = nodes
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|n| {
                    let manager_status = if n["ManagerStatus"]["Leader"].as_bool() == Some(true) {
                        "Leader".to_string()
                    } else {
                        match n["ManagerStatus"]["Reachability"].as_str() {
                            Some("reachable") => "Reachable".into(),
                            Some("unreachable") => "Unreachable".into(),
                            _ => String::new(),
                        }
                    };
                    let capital = |s: &str| {
                        let mut c = s.chars();
                        c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
                    };
                    json!({
                        "ID": n["ID"],
                        "Self": n["ID"].as_str() == Some(me.as_str()),
                        "Hostname": n["Description"]["Hostname"],
                        "Status": capital(n["Status"]["State"].as_str().unwrap_or_default()),
                        "Availability": capital(n["Spec"]["Availability"].as_str().unwrap_or_default()),
                        "ManagerStatus": manager_status,
                        "EngineVersion": n["Description"]["Engine"]["EngineVersion"],
                    })
                })
                .collect();
            if quiet {
                for row in rows {
                    println!("{}", row["ID"].as_str().unwrap_or_default());
                }
            } else if format.as_deref() == Some("json") {
                for row in rows {
                    println!("{row}");
                }
            } else {
                println!(
                    "{:<29}{:<20}{:<10}{:<14}{:<16}",
                    "ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS"
                );
                for row in rows {
                    let id = format!(
                        "{}{}",
                        row["ID"].as_str().unwrap_or_default(),
                        if row["Self"] == true { " *" } else { "" }
                    );
                    let s = |k: &str| row[k].as_str().unwrap_or_default().to_string();
                    println!(
                        "{id:<29}{:<20}{:<10}{:<14}{:<16}",
                        s("Hostname"),
                        s("Status"),
                        s("Availability"),
                        s("ManagerStatus")
                    );
                }
            }
        }
        NodeVerb::Inspect { nodes } => {
            let mut all = Vec::new();
            for key in nodes {
                all.push(call(socket, "GET", &format!("/nodes/{key}"), None).await?);
            }
            println!("{}", serde_json::to_string_pretty(&all)?);
        }
        NodeVerb::Promote { nodes } | NodeVerb::Demote { nodes } if nodes.is_empty() => {
            bail!("requires at least 1 node")
        }
        NodeVerb::Promote { nodes } => {
            for key in nodes {
                update_node(socket, &key, |s| {
                    s["Role"] = json!("manager");
                    Ok(())
                })
                .await?;
                println!("Node {key} promoted to a manager in the swarm.");
            }
        }
        NodeVerb::Demote { nodes } => {
            for key in nodes {
                update_node(socket, &key, |s| {
                    s["Role"] = json!("worker");
                    Ok(())
                })
                .await?;
                println!("Manager {key} demoted in the swarm.");
            }
        }
        NodeVerb::Rm { force, nodes } => {
            for key in nodes {
                call(
                    socket,
                    "DELETE",
                    &format!("/nodes/{key}?force={force}"),
                    None,
                )
                .await?;
                println!("{key}");
            }
        }
        NodeVerb::Update {
            availability,
            label_add,
            label_rm,
            role,
            node,
        } => {
            update_node(socket, &node, |s| {
                if let Some(a) = availability {
                    s["Availability"] = json!(a);
                }
                if let Some(r) = role {
                    s["Role"] = json!(r);
                }
                if !s["Labels"].is_object() {
                    s["Labels"] = json!({});
                }
                for label in label_add {
                    let (k, v) = label.split_once('=').unwrap_or((label.as_str(), ""));
                    s["Labels"][k] = json!(v);
                }
                for key in label_rm {
                    if let Some(map) = s["Labels"].as_object_mut()
                        && map.remove(&key).is_none()
                    {
                        bail!("key {key} doesn't exist in node's labels");
                    }
                }
                Ok(())
            })
            .await?;
            println!("{node}");
        }
    }
    Ok(())
}
