//! The Docker Engine API's JSON shapes (API 1.41), built from live state: `/version`, `/info`,
//! `/swarm`, `/nodes`.

use serde_json::{Value, json};

use crate::daemon::{Daemon, View};
use crate::pki;
use crate::state::{Node, NodeState, Role};

pub const API_VERSION: &str = "1.41";
pub const MIN_API_VERSION: &str = "1.12";
pub const ENGINE_VERSION: &str = concat!("20.10.24-slipway-", env!("CARGO_PKG_VERSION"));

fn tls_info(ca_der: &[u8]) -> Value {
    let (subject, public_key) = pki::issuer_fields(ca_der);
    json!({
        "TrustRoot": pki::der_to_pem(ca_der),
        "CertIssuerSubject": subject,
        "CertIssuerPublicKey": public_key,
    })
}

pub fn node(view: &View, node: &Node) -> Value {
    let mut value = json!({
        "ID": node.id,
        "Version": {"Index": node.version},
        "CreatedAt": node.created_at,
        "UpdatedAt": node.updated_at,
        "Spec": node.spec,
        "Description": {
            "Hostname": node.description.hostname,
            "Platform": {"Architecture": node.description.architecture, "OS": node.description.os},
            "Resources": {"NanoCPUs": node.description.nano_cpus, "MemoryBytes": node.description.memory_bytes},
            "Engine": {"EngineVersion": ENGINE_VERSION},
            "TLSInfo": tls_info(&view.session.ca_der),
        },
        "Status": {"State": node.state.as_str(), "Addr": node.addr},
    });
    if let Some(addr) = &node.manager_addr {
        let leader = view.is_leader(node);
        let reachable = leader || node.state == NodeState::Ready;
        let mut status = json!({
            "Reachability": if reachable { "reachable" } else { "unreachable" },
            "Addr": addr,
        });
        if leader {
            status["Leader"] = json!(true);
        }
        value["ManagerStatus"] = status;
    }
    value
}

pub fn swarm(view: &View) -> Value {
    let Some(cluster) = &view.state.cluster else {
        return json!({});
    };
    let ca_der = &view.session.ca_der;
    json!({
        "ID": cluster.id,
        "Version": {"Index": cluster.version},
        "CreatedAt": cluster.created_at,
        "UpdatedAt": cluster.updated_at,
        "Spec": cluster.spec,
        "TLSInfo": tls_info(ca_der),
        "RootRotationInProgress": false,
        "DefaultAddrPool": ["10.0.0.0/8"],
        "SubnetSize": 24,
        "DataPathPort": 4789,
        "JoinTokens": {
            "Worker": crate::ids::join_token(ca_der, &cluster.worker_secret),
            "Manager": crate::ids::join_token(ca_der, &cluster.manager_secret),
        },
    })
}

pub fn version() -> Value {
    let kernel = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    json!({
        "Platform": {"Name": "Slipway"},
        "Components": [{
            "Name": "Engine",
            "Version": ENGINE_VERSION,
            "Details": {"ApiVersion": API_VERSION, "Arch": go_arch(), "KernelVersion": kernel, "MinAPIVersion": MIN_API_VERSION, "Os": "linux"},
        }],
        "Version": ENGINE_VERSION,
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "",
        "GoVersion": "",
        "Os": "linux",
        "Arch": go_arch(),
        "KernelVersion": kernel,
    })
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub fn info(daemon: &Daemon) -> Value {
    let uname = rustix::system::uname();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut swarm = json!({
        "NodeID": "",
        "NodeAddr": "",
        "LocalNodeState": "inactive",
        "ControlAvailable": false,
        "Error": "",
        "RemoteManagers": null,
    });
    if daemon.is_locked() {
        swarm["LocalNodeState"] = json!("locked");
    } else if let Some(error) = daemon.local_error() {
        swarm["LocalNodeState"] = json!("error");
        swarm["Error"] = json!(error);
    }
    if let Some(session) = daemon.session() {
        let advertise_ip = session
            .local
            .advertise_addr
            .rsplit_once(':')
            .map(|(h, _)| h.trim_matches(['[', ']']).to_string())
            .unwrap_or_default();
        swarm["NodeID"] = json!(session.local.node_id);
        swarm["NodeAddr"] = json!(advertise_ip);
        swarm["LocalNodeState"] = json!("active");
        let managers = session.known_managers();
        swarm["RemoteManagers"] = json!(
            managers
                .iter()
                .map(|a| json!({"NodeID": "", "Addr": a}))
                .collect::<Vec<_>>()
        );
        if let Ok(view) = daemon.view() {
            swarm["ControlAvailable"] = json!(true);
            swarm["Nodes"] = json!(view.state.nodes.len());
            swarm["Managers"] = json!(
                view.state
                    .nodes
                    .values()
                    .filter(|n| n.spec.role == Role::Manager)
                    .count()
            );
            swarm["RemoteManagers"] = json!(
                view.state
                    .nodes
                    .values()
                    .filter_map(|n| n
                        .manager_addr
                        .as_ref()
                        .map(|a| json!({"NodeID": n.id, "Addr": a})))
                    .collect::<Vec<_>>()
            );
            let mut cluster = self::swarm(&view);
            if let Some(map) = cluster.as_object_mut() {
                map.remove("JoinTokens");
            }
            swarm["Cluster"] = cluster;
        }
    }
    json!({
        "ID": daemon.session().map(|s| s.local.node_id.clone()).unwrap_or_default(),
        "Containers": 0, "ContainersRunning": 0, "ContainersPaused": 0, "ContainersStopped": 0, "Images": 0,
        "Driver": "", "DriverStatus": [],
        "Plugins": {"Volume": [], "Network": [], "Authorization": null, "Log": []},
        "MemoryLimit": true, "SwapLimit": false, "CpuCfsPeriod": true, "CpuCfsQuota": true, "CPUShares": true, "CPUSet": true,
        "PidsLimit": true, "IPv4Forwarding": true, "Debug": false, "NFd": 0, "OomKillDisable": false, "NGoroutines": 0,
        "SystemTime": crate::state::now_rfc3339(),
        "LoggingDriver": "", "CgroupDriver": "", "CgroupVersion": "2", "NEventsListener": 0,
        "KernelVersion": uname.release().to_string_lossy(),
        "OperatingSystem": "Slipway", "OSVersion": "", "OSType": "linux",
        "Architecture": std::env::consts::ARCH,
        "IndexServerAddress": "",
        "RegistryConfig": {"AllowNondistributableArtifactsCIDRs": [], "AllowNondistributableArtifactsHostnames": [], "InsecureRegistryCIDRs": [], "IndexConfigs": {}, "Mirrors": []},
        "NCPU": cpus,
        "MemTotal": 0,
        "GenericResources": null,
        "DockerRootDir": daemon.opts().state_dir.display().to_string(),
        "HttpProxy": "", "HttpsProxy": "", "NoProxy": "",
        "Name": daemon.opts().hostname,
        "Labels": [],
        "ExperimentalBuild": false,
        "ServerVersion": ENGINE_VERSION,
        "Runtimes": {}, "DefaultRuntime": "",
        "Swarm": swarm,
        "LiveRestoreEnabled": false, "Isolation": "", "InitBinary": "",
        "ContainerdCommit": {"ID": "", "Expected": ""}, "RuncCommit": {"ID": "", "Expected": ""}, "InitCommit": {"ID": "", "Expected": ""},
        "SecurityOptions": [],
        "Warnings": null,
    })
}
