//! The service calls both services tests make through the agent's Docker API.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::Node;

/// `POST /services/create`; the new service's ID.
pub fn create(node: &Node, spec: &Value) -> String {
    let reply = node.api("POST", "/v1.41/services/create", &spec.to_string());
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.json()["ID"].as_str().expect("an ID").to_string()
}

/// Reads the service, lets `change` edit its spec, and posts it with its version.
pub fn update(node: &Node, service: &str, change: impl FnOnce(&mut Value)) {
    let current = node.api("GET", &format!("/v1.41/services/{service}"), "");
    assert_eq!(current.status, 200, "{}", current.body);
    let current = current.json();
    let version = current["Version"]["Index"].as_u64().expect("a version");
    let mut spec = current["Spec"].clone();
    change(&mut spec);
    let reply = node.api(
        "POST",
        &format!("/v1.41/services/{service}/update?version={version}"),
        &spec.to_string(),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
}

pub fn tasks(node: &Node, service: &str) -> Vec<Value> {
    let filters = json!({"service": {service: true}}).to_string();
    let path = format!("/v1.41/tasks?filters={}", percent_encode(&filters));
    let reply = node.api("GET", &path, "");
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json().as_array().cloned().unwrap_or_default()
}

pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Hostname by node ID.
pub fn hosts(node: &Node) -> BTreeMap<String, String> {
    node.api("GET", "/v1.41/nodes", "")
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|n| {
            (
                n["ID"].as_str().unwrap_or("").to_string(),
                n["Description"]["Hostname"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect()
}
