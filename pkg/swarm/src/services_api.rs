//! The Docker Engine API for services, tasks, secrets and configs:
//!
//! ```text
//! GET  /services[?filters=&status=]     POST /services/create     GET /services/{id}[?insertDefaults=]
//! POST /services/{id}/update?version=[&rollback=previous]         DELETE /services/{id}
//! GET  /tasks[?filters=]                GET  /tasks/{id}
//! GET  /secrets|/configs[?filters=]     POST /secrets|/configs/create
//! GET  /secrets|/configs/{id}           DELETE /secrets|/configs/{id}
//! ```
//!
//! Reads answer from this manager's applied state; writes go through Raft (forwarded to the
//! leader by any manager). A service is found by ID, name or unique ID prefix, as in Docker.

use std::collections::HashMap;

use base64::Engine as _;
use hyper::body::Incoming;
use hyper::{Method, Request};
use serde_json::{Value, json};

use crate::api::{Filters, body, empty, json_reply, parse_filters_for, truthy, version_param};
use crate::daemon::{ApiError, Daemon, View};
use crate::model::{ServiceSpec, Task, TaskState};
use crate::objects::{FileKind, FileObject, FileSpec, ObjectCommand, Service};
use crate::orchestrator::{scheduler, slots};
use crate::state::{ClusterState, Command, CommandResult, now_rfc3339};

type Reply = hyper::Response<http_body_util::Full<bytes::Bytes>>;

fn lookup<T>(r: Result<T, (u16, String)>) -> Result<T, ApiError> {
    r.map_err(|(s, m)| ApiError::new(s, m))
}

fn check(result: CommandResult) -> Result<(), ApiError> {
    match result {
        CommandResult::Ok => Ok(()),
        CommandResult::Refused { status, message } => Err(ApiError::new(status, message)),
    }
}

async fn propose(daemon: &Daemon, command: ObjectCommand) -> Result<(), ApiError> {
    check(daemon.propose(Command::Objects(Box::new(command))).await?)
}

pub async fn route(
    daemon: &Daemon,
    method: &Method,
    segments: &[&str],
    q: &HashMap<String, String>,
    request: Request<Incoming>,
) -> Option<Result<Reply, ApiError>> {
    let file_kind = |s: &str| match s {
        "secrets" => Some(FileKind::Secret),
        "configs" => Some(FileKind::Config),
        _ => None,
    };
    let result = match (method, segments) {
        (&Method::GET, ["services"]) => list_services(daemon, q),
        (&Method::POST, ["services", "create"]) => create_service(daemon, request).await,
        (&Method::GET, ["services", key]) => inspect_service(daemon, key, q),
        (&Method::POST, ["services", key, "update"]) => {
            update_service(daemon, key, q, request).await
        }
        (&Method::DELETE, ["services", key]) => remove_service(daemon, key).await,
        (&Method::GET, ["tasks"]) => list_tasks(daemon, q),
        (&Method::GET, ["tasks", key]) => inspect_task(daemon, key),
        (&Method::GET, [kind]) if file_kind(kind).is_some() => {
            list_files(daemon, file_kind(kind)?, q)
        }
        (&Method::POST, [kind, "create"]) if file_kind(kind).is_some() => {
            create_file(daemon, file_kind(kind)?, request).await
        }
        (&Method::GET, [kind, key]) if file_kind(kind).is_some() => {
            let view = daemon.view();
            view.and_then(|view| {
                let kind = file_kind(kind).unwrap_or(FileKind::Secret);
                let file = lookup(view.state.find_file(kind, key))?;
                Ok(json_reply(200, &file_json(kind, file)))
            })
        }
        (&Method::DELETE, [kind, key]) if file_kind(kind).is_some() => {
            remove_file(daemon, file_kind(kind)?, key).await
        }
        _ => return None,
    };
    Some(result)
}

// ---- services ---------------------------------------------------------------------------------

fn service_json(state: &ClusterState, service: &Service, status: bool, defaults: bool) -> Value {
    let mut value = serde_json::to_value(service).unwrap_or(Value::Null);
    let endpoint = service
        .spec
        .endpoint_spec
        .as_ref()
        .map(|e| serde_json::to_value(e).unwrap_or(json!({})))
        .unwrap_or(json!({}));
    let ports = endpoint.get("Ports").cloned();
    let mut endpoint_value = json!({ "Spec": endpoint });
    if let Some(ports) = ports {
        endpoint_value["Ports"] = ports;
    }
    value["Endpoint"] = endpoint_value;
    if defaults && let Some(spec) = value.get_mut("Spec") {
        insert_defaults(spec);
    }
    if status {
        let tasks = state
            .objects
            .tasks
            .values()
            .filter(|t| t.service_id == service.id && t.desired_state <= TaskState::Running);
        let (mut running, mut live) = (0u64, 0u64);
        for task in tasks {
            live += 1;
            if task.status.state == TaskState::Running {
                running += 1;
            }
        }
        let desired = if slots::is_global(service) {
            live
        } else {
            slots::replicas(service)
        };
        value["ServiceStatus"] = json!({
            "RunningTasks": running,
            "DesiredTasks": desired,
            "CompletedTasks": 0,
        });
    }
    value
}

/// Docker's `insertDefaults=true`: the values the daemon uses for what the spec leaves out.
fn insert_defaults(spec: &mut Value) {
    fn fill(target: &mut Value, key: &str, defaults: Value) {
        if !target.is_object() {
            return;
        }
        let entry = target
            .as_object_mut()
            .map(|m| m.entry(key.to_string()).or_insert_with(|| json!({})));
        if let (Some(entry), Value::Object(defaults)) = (entry, defaults) {
            if !entry.is_object() {
                *entry = json!({});
            }
            for (k, v) in defaults {
                entry.as_object_mut().map(|m| m.entry(k).or_insert(v));
            }
        }
    }
    let update = json!({"Parallelism": 1, "FailureAction": "pause", "Monitor": 5_000_000_000i64,
        "MaxFailureRatio": 0, "Order": "stop-first"});
    if let Some(template) = spec.get_mut("TaskTemplate") {
        fill(
            template,
            "RestartPolicy",
            json!({"Condition": "any", "Delay": 5_000_000_000i64, "MaxAttempts": 0}),
        );
        if let Some(container) = template.get_mut("ContainerSpec")
            && let Some(map) = container.as_object_mut()
        {
            map.entry("StopGracePeriod")
                .or_insert(json!(10_000_000_000i64));
        }
    }
    fill(spec, "UpdateConfig", update.clone());
    fill(spec, "RollbackConfig", update);
}

fn service_matches(service: &Service, filters: &Filters) -> bool {
    filters.iter().all(|(key, values)| {
        values.is_empty()
            || values.iter().any(|v| match key.as_str() {
                "id" => service.id.starts_with(v.as_str()),
                "name" => service.spec.name.starts_with(v.as_str()),
                "label" => match v.split_once('=') {
                    Some((k, val)) => service.spec.labels.get(k).is_some_and(|x| x == val),
                    None => service.spec.labels.contains_key(v.as_str()),
                },
                "mode" => (v == "global") == slots::is_global(service),
                _ => false,
            })
    })
}

fn list_services(daemon: &Daemon, q: &HashMap<String, String>) -> Result<Reply, ApiError> {
    let view = daemon.view()?;
    let filters = parse_filters_for(q.get("filters"), &["id", "name", "label", "mode"])?;
    let status = truthy(q.get("status"));
    let list: Vec<Value> = view
        .state
        .objects
        .services
        .values()
        .filter(|s| service_matches(s, &filters))
        .map(|s| service_json(&view.state, s, status, false))
        .collect();
    Ok(json_reply(200, &Value::Array(list)))
}

fn inspect_service(
    daemon: &Daemon,
    key: &str,
    q: &HashMap<String, String>,
) -> Result<Reply, ApiError> {
    let view = daemon.view()?;
    let service = lookup(view.state.find_service(key))?;
    Ok(json_reply(
        200,
        &service_json(&view.state, service, false, truthy(q.get("insertDefaults"))),
    ))
}

fn invalid(message: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        400,
        format!("rpc error: code = InvalidArgument desc = {message}"),
    )
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !name.starts_with('-')
}

/// A bound Docker does not have: a typo of a few zeros must not make the leader write
/// billions of tasks.
const MAX_REPLICAS: u64 = 1_000_000;

/// Docker's checks of a service spec, and the defaults it stores (replicated, one replica).
fn validate(view: &View, spec: &mut ServiceSpec) -> Result<(), ApiError> {
    if !valid_name(&spec.name) {
        return Err(invalid("name must be valid as a DNS name component"));
    }
    let container = spec
        .task_template
        .container_spec
        .as_ref()
        .ok_or_else(|| invalid("ContainerSpec: missing in service spec"))?;
    if container.image.is_empty() {
        return Err(invalid("ContainerSpec: image reference must be provided"));
    }
    for (kind, refs) in [
        (FileKind::Secret, &container.secrets),
        (FileKind::Config, &container.configs),
    ] {
        for r in refs {
            let id = match kind {
                FileKind::Secret => r.secret_id.as_deref(),
                FileKind::Config => r.config_id.as_deref(),
            }
            .unwrap_or("");
            if !view.state.objects.files(kind).contains_key(id) {
                return Err(invalid(format!(
                    "{} reference not found: {id}",
                    kind.as_str()
                )));
            }
        }
    }
    if let Some(placement) = &spec.task_template.placement {
        for c in &placement.constraints {
            if !scheduler::valid_constraint(c) {
                return Err(invalid(format!("invalid constraint: {c}")));
            }
        }
    }
    let mode = spec.mode.get_or_insert_with(Default::default);
    match (&mode.replicated, &mode.global) {
        (Some(_), Some(_)) => return Err(invalid("service can't be both replicated and global")),
        (None, None) => {
            mode.replicated = Some(crate::model::Replicated { replicas: Some(1) });
        }
        (Some(r), None) if r.replicas.is_none() => {
            mode.replicated = Some(crate::model::Replicated { replicas: Some(1) });
        }
        (Some(r), None) if r.replicas.is_some_and(|n| n > MAX_REPLICAS) => {
            return Err(invalid(format!(
                "this swarm agent runs at most {MAX_REPLICAS} replicas of a service"
            )));
        }
        _ => {}
    }
    Ok(())
}

async fn create_service(daemon: &Daemon, request: Request<Incoming>) -> Result<Reply, ApiError> {
    let mut spec: ServiceSpec = body(request).await?;
    let view = daemon.view()?;
    let id = crate::ids::new_id();
    if spec.name.is_empty() {
        spec.name = format!("service-{}", &id[..8.min(id.len())]);
    }
    validate(&view, &mut spec)?;
    let now = now_rfc3339();
    let service = Service {
        id: id.clone(),
        created_at: now.clone(),
        updated_at: now,
        spec,
        ..Service::default()
    };
    propose(
        daemon,
        ObjectCommand::CreateService {
            service: Box::new(service),
        },
    )
    .await?;
    Ok(json_reply(201, &json!({ "ID": id })))
}

async fn update_service(
    daemon: &Daemon,
    key: &str,
    q: &HashMap<String, String>,
    request: Request<Incoming>,
) -> Result<Reply, ApiError> {
    let version = version_param(q)?;
    let mut spec: ServiceSpec = body(request).await?;
    let view = daemon.view()?;
    let id = lookup(view.state.find_service(key))?.id.clone();
    let rollback = q.get("rollback").is_some_and(|r| r == "previous");
    if !rollback {
        validate(&view, &mut spec)?;
    }
    propose(
        daemon,
        ObjectCommand::UpdateService {
            id,
            version,
            spec: Box::new(spec),
            rollback,
            now: now_rfc3339(),
        },
    )
    .await?;
    Ok(json_reply(200, &json!({ "Warnings": null })))
}

async fn remove_service(daemon: &Daemon, key: &str) -> Result<Reply, ApiError> {
    let view = daemon.view()?;
    let id = lookup(view.state.find_service(key))?.id.clone();
    propose(daemon, ObjectCommand::RemoveService { id }).await?;
    Ok(empty(200))
}

// ---- tasks ------------------------------------------------------------------------------------

fn task_matches(state: &ClusterState, task: &Task, filters: &Filters) -> bool {
    let service = state.objects.services.get(&task.service_id);
    filters.iter().all(|(key, values)| {
        values.is_empty()
            || values.iter().any(|v| match key.as_str() {
                "id" => task.id.starts_with(v.as_str()),
                "service" => state.find_service(v).is_ok_and(|s| s.id == task.service_id),
                "node" => state.find_node(v).is_ok_and(|n| n.id == task.node_id),
                "desired-state" => match v.as_str() {
                    "running" => task.desired_state <= TaskState::Running,
                    "shutdown" => task.desired_state >= TaskState::Shutdown,
                    "accepted" => task.desired_state == TaskState::Accepted,
                    _ => false,
                },
                "name" => service.is_some_and(|s| {
                    let suffix = if task.slot > 0 {
                        task.slot.to_string()
                    } else {
                        task.node_id.clone()
                    };
                    format!("{}.{suffix}", s.spec.name).starts_with(v.as_str())
                }),
                "label" => match v.split_once('=') {
                    Some((k, val)) => task.labels.get(k).is_some_and(|x| x == val),
                    None => task.labels.contains_key(v.as_str()),
                },
                "_up-to-date" => {
                    service.is_some_and(|s| s.spec.task_template == task.spec) == truthy(Some(v))
                }
                _ => false,
            })
    })
}

fn list_tasks(daemon: &Daemon, q: &HashMap<String, String>) -> Result<Reply, ApiError> {
    let view = daemon.view()?;
    let filters = parse_filters_for(
        q.get("filters"),
        &[
            "id",
            "name",
            "service",
            "node",
            "desired-state",
            "label",
            "_up-to-date",
        ],
    )?;
    let list: Vec<Value> = view
        .state
        .objects
        .tasks
        .values()
        .filter(|t| task_matches(&view.state, t, &filters))
        .map(|t| serde_json::to_value(t).unwrap_or(Value::Null))
        .collect();
    Ok(json_reply(200, &Value::Array(list)))
}

fn inspect_task(daemon: &Daemon, key: &str) -> Result<Reply, ApiError> {
    let view = daemon.view()?;
    let tasks = &view.state.objects.tasks;
    let task = tasks.get(key).or_else(|| {
        let mut found = tasks.values().filter(|t| t.id.starts_with(key));
        match (found.next(), found.next()) {
            (Some(t), None) if !key.is_empty() => Some(t),
            _ => None,
        }
    });
    match task {
        Some(t) => Ok(json_reply(
            200,
            &serde_json::to_value(t).unwrap_or(Value::Null),
        )),
        None => Err(ApiError::new(404, format!("task {key} not found"))),
    }
}

// ---- secrets and configs ---------------------------------------------------------------------

/// A secret's data never leaves the managers through the API; a config's does.
fn file_json(kind: FileKind, file: &FileObject) -> Value {
    let mut file = file.clone();
    if kind == FileKind::Secret {
        file.spec.data.clear();
    }
    serde_json::to_value(&file).unwrap_or(Value::Null)
}

fn list_files(
    daemon: &Daemon,
    kind: FileKind,
    q: &HashMap<String, String>,
) -> Result<Reply, ApiError> {
    let view = daemon.view()?;
    let filters = parse_filters_for(q.get("filters"), &["id", "name", "label", "names"])?;
    let list: Vec<Value> = view
        .state
        .objects
        .files(kind)
        .values()
        .filter(|f| {
            filters.iter().all(|(key, values)| {
                values.is_empty()
                    || values.iter().any(|v| match key.as_str() {
                        "id" => f.id.starts_with(v.as_str()),
                        "name" => f.spec.name.starts_with(v.as_str()),
                        "names" => f.spec.name == *v,
                        "label" => match v.split_once('=') {
                            Some((k, val)) => f.spec.labels.get(k).is_some_and(|x| x == val),
                            None => f.spec.labels.contains_key(v.as_str()),
                        },
                        _ => false,
                    })
            })
        })
        .map(|f| file_json(kind, f))
        .collect();
    Ok(json_reply(200, &Value::Array(list)))
}

/// SwarmKit's limit on a secret's or config's size.
const MAX_FILE: usize = 500 * 1024;

async fn create_file(
    daemon: &Daemon,
    kind: FileKind,
    request: Request<Incoming>,
) -> Result<Reply, ApiError> {
    let spec: FileSpec = body(request).await?;
    daemon.view()?;
    if !valid_name(&spec.name) {
        return Err(invalid(format!(
            "invalid name, only 64 [a-zA-Z0-9-_.] characters allowed, and the start and end character must be [a-zA-Z0-9]: {}",
            spec.name
        )));
    }
    let data = base64::engine::general_purpose::STANDARD
        .decode(&spec.data)
        .map_err(|e| ApiError::new(400, format!("invalid JSON: {} data: {e}", kind.as_str())))?;
    if data.is_empty() || data.len() > MAX_FILE {
        return Err(invalid(format!(
            "{} data must be larger than 0 and less than 500KB",
            kind.as_str()
        )));
    }
    let id = crate::ids::new_id();
    let now = now_rfc3339();
    let object = FileObject {
        id: id.clone(),
        created_at: now.clone(),
        updated_at: now,
        spec,
        ..FileObject::default()
    };
    propose(
        daemon,
        ObjectCommand::CreateFile {
            kind,
            object: Box::new(object),
        },
    )
    .await?;
    Ok(json_reply(201, &json!({ "ID": id })))
}

async fn remove_file(daemon: &Daemon, kind: FileKind, key: &str) -> Result<Reply, ApiError> {
    let view = daemon.view()?;
    let id = lookup(view.state.find_file(kind, key))?.id.clone();
    propose(daemon, ObjectCommand::RemoveFile { kind, id }).await?;
    Ok(empty(204))
}
