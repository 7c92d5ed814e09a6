//! The agent's client verbs for services, secrets and configs, with Docker's names and main
//! flags: `service create|ls|ps|inspect|scale|update|rollback|logs|rm`, `secret|config
//! create|ls|inspect|rm`. Each is a few requests to the daemon's Docker Engine API.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use clap::Subcommand;
use serde_json::{Value, json};

use crate::cli::call;

// Parsed once per run: the size of `Create` does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum ServiceVerb {
    /// Create a service.
    Create {
        #[arg(long)]
        name: Option<String>,
        /// `replicated` or `global`.
        #[arg(long, default_value = "replicated")]
        mode: String,
        #[arg(long)]
        replicas: Option<u64>,
        #[arg(short, long)]
        env: Vec<String>,
        #[arg(long)]
        constraint: Vec<String>,
        /// `any`, `on-failure` or `none`.
        #[arg(long)]
        restart_condition: Option<String>,
        #[arg(long)]
        restart_delay: Option<humantime::Duration>,
        #[arg(long)]
        restart_max_attempts: Option<u64>,
        #[arg(long)]
        restart_window: Option<humantime::Duration>,
        #[arg(long)]
        update_parallelism: Option<u64>,
        #[arg(long)]
        update_delay: Option<humantime::Duration>,
        #[arg(long)]
        update_failure_action: Option<String>,
        #[arg(long)]
        update_monitor: Option<humantime::Duration>,
        #[arg(long)]
        update_order: Option<String>,
        /// A secret's name, mounted as /run/secrets/NAME.
        #[arg(long)]
        secret: Vec<String>,
        /// Accepted for Docker's compatibility: this CLI never waits.
        #[arg(short, long)]
        detach: bool,
        image: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// List services.
    Ls {
        #[arg(short, long)]
        quiet: bool,
    },
    /// List the tasks of a service.
    Ps {
        #[arg(short, long)]
        quiet: bool,
        service: String,
    },
    /// Display detailed information on services.
    Inspect { services: Vec<String> },
    /// Scale services: NAME=REPLICAS...
    Scale {
        #[arg(short, long)]
        detach: bool,
        scales: Vec<String>,
    },
    /// Update a service.
    Update {
        #[arg(long)]
        image: Option<String>,
        #[arg(long)]
        replicas: Option<u64>,
        #[arg(long)]
        env_add: Vec<String>,
        #[arg(long)]
        force: bool,
        #[arg(long)]
        rollback: bool,
        #[arg(short, long)]
        detach: bool,
        service: String,
    },
    /// Revert a service to its previous spec.
    Rollback {
        #[arg(short, long)]
        detach: bool,
        service: String,
    },
    /// A service's logs.
    Logs {
        /// Go on with new lines until the service is removed.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines of each task (or `all`).
        #[arg(long)]
        tail: Option<String>,
        /// Only lines since a time (RFC 3339, Unix seconds) or a duration ago (`10m`).
        #[arg(long)]
        since: Option<String>,
        service: String,
    },
    /// Remove services.
    Rm { services: Vec<String> },
}

#[derive(Subcommand)]
pub enum FileVerb {
    /// Create from a file, or `-` for standard input.
    Create {
        name: String,
        file: String,
    },
    Ls {
        #[arg(short, long)]
        quiet: bool,
    },
    Inspect {
        names: Vec<String>,
    },
    Rm {
        names: Vec<String>,
    },
}

fn nanos(d: humantime::Duration) -> i64 {
    Duration::from(d).as_nanos() as i64
}

fn print_json(values: &[Value]) {
    println!(
        "{}",
        serde_json::to_string_pretty(&Value::Array(values.to_vec())).unwrap_or_default()
    );
}

/// Posts `spec` (changed by `change`) to `/services/{id}/update` with the current version.
async fn update(
    socket: &Path,
    key: &str,
    query: &str,
    change: impl FnOnce(&mut Value),
) -> anyhow::Result<()> {
    let service = call(socket, "GET", &format!("/services/{key}"), None).await?;
    let version = service["Version"]["Index"].as_u64().unwrap_or(0);
    let id = service["ID"].as_str().unwrap_or_default().to_string();
    let mut spec = service["Spec"].clone();
    change(&mut spec);
    call(
        socket,
        "POST",
        &format!("/services/{id}/update?version={version}{query}"),
        Some(spec),
    )
    .await?;
    println!("{key}");
    Ok(())
}

pub async fn service(socket: &Path, verb: ServiceVerb) -> anyhow::Result<()> {
    match verb {
        ServiceVerb::Create {
            name,
            mode,
            replicas,
            env,
            constraint,
            restart_condition,
            restart_delay,
            restart_max_attempts,
            restart_window,
            update_parallelism,
            update_delay,
            update_failure_action,
            update_monitor,
            update_order,
            secret,
            detach: _,
            image,
            args,
        } => {
            let mut secrets = Vec::new();
            for name in secret {
                let found = call(socket, "GET", &format!("/secrets/{name}"), None).await?;
                secrets.push(json!({
                    "File": {"Name": name, "UID": "0", "GID": "0", "Mode": 0o444},
                    "SecretID": found["ID"], "SecretName": name,
                }));
            }
            let mut container = json!({"Image": image});
            if !args.is_empty() {
                container["Args"] = json!(args);
            }
            if !env.is_empty() {
                container["Env"] = json!(env);
            }
            if !secrets.is_empty() {
                container["Secrets"] = json!(secrets);
            }
            let mut restart = json!({});
            if let Some(c) = restart_condition {
                restart["Condition"] = json!(c);
            }
            if let Some(d) = restart_delay {
                restart["Delay"] = json!(nanos(d));
            }
            if let Some(m) = restart_max_attempts {
                restart["MaxAttempts"] = json!(m);
            }
            if let Some(w) = restart_window {
                restart["Window"] = json!(nanos(w));
            }
            let mode = match mode.as_str() {
                "global" => json!({"Global": {}}),
                "replicated" => json!({"Replicated": {"Replicas": replicas.unwrap_or(1)}}),
                other => bail!("invalid mode {other:?}: replicated or global"),
            };
            let mut update_config = json!({
                "Parallelism": update_parallelism.unwrap_or(1),
                "FailureAction": update_failure_action.unwrap_or_else(|| "pause".into()),
                "Order": update_order.unwrap_or_else(|| "stop-first".into()),
            });
            if let Some(d) = update_delay {
                update_config["Delay"] = json!(nanos(d));
            }
            if let Some(m) = update_monitor {
                update_config["Monitor"] = json!(nanos(m));
            }
            let spec = json!({
                "Name": name.unwrap_or_default(),
                "TaskTemplate": {
                    "ContainerSpec": container,
                    "RestartPolicy": restart,
                    "Placement": {"Constraints": constraint},
                },
                "Mode": mode,
                "UpdateConfig": update_config,
            });
            let created = call(socket, "POST", "/services/create", Some(spec)).await?;
            println!("{}", created["ID"].as_str().unwrap_or_default());
        }
        ServiceVerb::Ls { quiet } => {
            let services = call(socket, "GET", "/services?status=true", None).await?;
            let services = services.as_array().cloned().unwrap_or_default();
            if !quiet {
                println!(
                    "{:<27}{:<20}{:<12}{:<10}IMAGE",
                    "ID", "NAME", "MODE", "REPLICAS"
                );
            }
            for s in services {
                let id = s["ID"].as_str().unwrap_or_default();
                if quiet {
                    println!("{id}");
                    continue;
                }
                let mode = if s["Spec"]["Mode"]["Global"].is_object() {
                    "global"
                } else {
                    "replicated"
                };
                let status = &s["ServiceStatus"];
                println!(
                    "{:<27}{:<20}{:<12}{:<10}{}",
                    id,
                    s["Spec"]["Name"].as_str().unwrap_or_default(),
                    mode,
                    format!("{}/{}", status["RunningTasks"], status["DesiredTasks"]),
                    s["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
                        .as_str()
                        .unwrap_or_default()
                );
            }
        }
        ServiceVerb::Ps { quiet, service } => {
            let found = call(socket, "GET", &format!("/services/{service}"), None).await?;
            let id = found["ID"].as_str().unwrap_or_default();
            let name = found["Spec"]["Name"].as_str().unwrap_or_default();
            let filters = json!({"service": {id: true}}).to_string();
            let path = format!(
                "/tasks?filters={}",
                percent_encoding::utf8_percent_encode(&filters, percent_encoding::NON_ALPHANUMERIC)
            );
            let tasks = call(socket, "GET", &path, None).await?;
            let nodes = call(socket, "GET", "/nodes", None).await?;
            let host = |id: &str| {
                nodes
                    .as_array()
                    .and_then(|n| n.iter().find(|n| n["ID"] == id))
                    .and_then(|n| n["Description"]["Hostname"].as_str())
                    .unwrap_or("")
                    .to_string()
            };
            if !quiet {
                println!(
                    "{:<27}{:<16}{:<16}{:<10}{:<10}ERROR",
                    "ID", "NAME", "NODE", "DESIRED", "CURRENT"
                );
            }
            let mut tasks = tasks.as_array().cloned().unwrap_or_default();
            tasks.sort_by_key(|t| {
                (
                    t["Slot"].as_u64(),
                    t["CreatedAt"].as_str().map(str::to_string),
                )
            });
            for t in tasks {
                let tid = t["ID"].as_str().unwrap_or_default();
                if quiet {
                    println!("{tid}");
                    continue;
                }
                let node = t["NodeID"].as_str().unwrap_or_default();
                let slot = match t["Slot"].as_u64() {
                    Some(n) if n > 0 => n.to_string(),
                    _ => node.to_string(),
                };
                println!(
                    "{:<27}{:<16}{:<16}{:<10}{:<10}{}",
                    tid,
                    format!("{name}.{slot}"),
                    host(node),
                    t["DesiredState"].as_str().unwrap_or_default(),
                    t["Status"]["State"].as_str().unwrap_or_default(),
                    t["Status"]["Err"].as_str().unwrap_or_default()
                );
            }
        }
        ServiceVerb::Inspect { services } => {
            let mut out = Vec::new();
            for s in services {
                out.push(
                    call(
                        socket,
                        "GET",
                        &format!("/services/{s}?insertDefaults=true"),
                        None,
                    )
                    .await?,
                );
            }
            print_json(&out);
        }
        ServiceVerb::Scale { detach: _, scales } => {
            for scale in scales {
                let Some((name, n)) = scale.split_once('=') else {
                    bail!("invalid scale specifier '{scale}': expected NAME=REPLICAS");
                };
                let n: u64 = n
                    .parse()
                    .with_context(|| format!("invalid replicas value {n}"))?;
                update(socket, name, "", |spec| {
                    spec["Mode"] = json!({"Replicated": {"Replicas": n}});
                })
                .await?;
            }
        }
        ServiceVerb::Update {
            image,
            replicas,
            env_add,
            force,
            rollback,
            detach: _,
            service,
        } => {
            let query = if rollback { "&rollback=previous" } else { "" };
            update(socket, &service, query, |spec| {
                let container = &mut spec["TaskTemplate"]["ContainerSpec"];
                if let Some(image) = image {
                    container["Image"] = json!(image);
                }
                if !env_add.is_empty() {
                    let mut env: Vec<Value> =
                        container["Env"].as_array().cloned().unwrap_or_default();
                    env.extend(env_add.into_iter().map(Value::String));
                    container["Env"] = json!(env);
                }
                if let Some(n) = replicas {
                    spec["Mode"] = json!({"Replicated": {"Replicas": n}});
                }
                if force {
                    let n = spec["TaskTemplate"]["ForceUpdate"].as_u64().unwrap_or(0);
                    spec["TaskTemplate"]["ForceUpdate"] = json!(n + 1);
                }
            })
            .await?;
        }
        ServiceVerb::Rollback { detach: _, service } => {
            update(socket, &service, "&rollback=previous", |_| {}).await?;
        }
        ServiceVerb::Logs {
            follow,
            tail,
            since,
            service,
        } => {
            let options = crate::logs::CliOptions {
                follow,
                tail,
                since,
            };
            crate::logs::print_service_logs(socket, &service, &options).await?;
        }
        ServiceVerb::Rm { services } => {
            for s in services {
                call(socket, "DELETE", &format!("/services/{s}"), None).await?;
                println!("{s}");
            }
        }
    }
    Ok(())
}

/// `secret` (`kind` = "secrets") and `config` (`kind` = "configs") verbs.
pub async fn file(socket: &Path, kind: &str, verb: FileVerb) -> anyhow::Result<()> {
    match verb {
        FileVerb::Create { name, file } => {
            let mut data = Vec::new();
            if file == "-" {
                std::io::stdin().read_to_end(&mut data)?;
            } else {
                data = std::fs::read(&file).with_context(|| format!("reading {file}"))?;
            }
            let body = json!({
                "Name": name,
                "Data": base64::engine::general_purpose::STANDARD.encode(&data),
            });
            let created = call(socket, "POST", &format!("/{kind}/create"), Some(body)).await?;
            println!("{}", created["ID"].as_str().unwrap_or_default());
        }
        FileVerb::Ls { quiet } => {
            let list = call(socket, "GET", &format!("/{kind}"), None).await?;
            if !quiet {
                println!("{:<27}{:<20}CREATED", "ID", "NAME");
            }
            for f in list.as_array().cloned().unwrap_or_default() {
                let id = f["ID"].as_str().unwrap_or_default();
                if quiet {
                    println!("{id}");
                } else {
                    println!(
                        "{:<27}{:<20}{}",
                        id,
                        f["Spec"]["Name"].as_str().unwrap_or_default(),
                        f["CreatedAt"].as_str().unwrap_or_default()
                    );
                }
            }
        }
        FileVerb::Inspect { names } => {
            let mut out = Vec::new();
            for n in names {
                out.push(call(socket, "GET", &format!("/{kind}/{n}"), None).await?);
            }
            print_json(&out);
        }
        FileVerb::Rm { names } => {
            for n in names {
                call(socket, "DELETE", &format!("/{kind}/{n}"), None).await?;
                println!("{n}");
            }
        }
    }
    Ok(())
}
