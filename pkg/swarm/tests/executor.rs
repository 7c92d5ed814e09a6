//! `EngineExecutor` against a real `slipway-engine daemon` (real containers from a busybox
//! image in a real registry): a node's tasks go running, are found again after a restart of
//! the agent's executor and of the engine, end as failed with their exit code, shut down, are
//! removed when unassigned, wait for their health check, get their secrets, and a bad image is
//! rejected. Needs root, Debian's busybox-static and docker-registry.

use std::time::{Duration, Instant};

use serde_json::json;
use slipway_swarm::executor::engine::{EngineExecutor, TASK_ID_LABEL, distribution};
use slipway_swarm::executor::engine_client::EngineClient;
use slipway_swarm::executor::{Assignment, Executor};
mod common;

use common::engine::{Engine, Registry, push_busybox_image};
use slipway_swarm::model::{
    ContainerSpec, FileData, FileReference, FileTarget, HealthConfig, Task, TaskSpec, TaskState,
    TaskStatus,
};

fn task(id: &str, slot: u64, image: &str, script: &str) -> Task {
    Task {
        id: id.to_owned(),
        name: format!("web.{slot}"),
        service_id: "svc1".to_owned(),
        node_id: "node1".to_owned(),
        slot,
        spec: TaskSpec {
            container_spec: Some(ContainerSpec {
                image: image.to_owned(),
                args: vec!["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()],
                stop_grace_period: Some(1_000_000_000),
                ..Default::default()
            }),
            ..Default::default()
        }
        .into(),
        status: TaskStatus {
            state: TaskState::Assigned,
            ..Default::default()
        },
        desired_state: TaskState::Running,
        ..Default::default()
    }
}

/// Reconciles (as the agent does, keeping each reported status) until `done` holds for every
/// task's status; returns every state each task went through.
async fn drive(
    executor: &EngineExecutor,
    assignment: &mut Assignment,
    secs: u64,
    done: impl Fn(&Task) -> bool,
) -> Vec<Vec<TaskState>> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut seen: Vec<Vec<TaskState>> = assignment.tasks.iter().map(|_| Vec::new()).collect();
    loop {
        let observed = executor.reconcile(assignment).await;
        assert_eq!(observed.len(), assignment.tasks.len());
        for (i, task) in assignment.tasks.iter_mut().enumerate() {
            let o = observed.iter().find(|o| o.task_id == task.id).unwrap();
            assert!(o.status.state >= task.status.state, "{o:?} went back");
            task.status = o.status.clone();
            if seen[i].last() != Some(&task.status.state) {
                seen[i].push(task.status.state);
            }
        }
        if assignment.tasks.iter().all(&done) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "tasks never got there: {:#?}",
            assignment
                .tasks
                .iter()
                .map(|t| &t.status)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The engine's containers of swarm tasks.
async fn containers(
    client: &EngineClient,
) -> Vec<slipway_swarm::executor::engine_client::ContainerInfo> {
    client.list_labelled(TASK_ID_LABEL).await.unwrap()
}

async fn exec(client: &EngineClient, name: &str, cmd: &[&str]) -> (i64, String) {
    let path = slipway_swarm::executor::engine_client::container_path(name, "exec");
    let reply: serde_json::Value = client
        .call(hyper::Method::POST, &path, Some(&json!({ "cmd": cmd })))
        .await
        .unwrap();
    (
        reply["exitCode"].as_i64().unwrap(),
        reply["output"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_as_engine_containers_and_survive_restarts() {
    let registry = Registry::start();
    let image = format!("127.0.0.1:{}/executor/busybox:1", registry.port);
    let digest = push_busybox_image(&image);
    let engine_dir = tempfile::tempdir().unwrap();
    let mut engine = Engine::new(engine_dir.path().join("engine"), "", "");
    engine.start();
    let socket = engine.socket();
    let client = EngineClient::new(&socket);

    // The digest Docker's CLI pins on `service create`.
    let resolved = distribution(&socket, &image).await.unwrap();
    assert_eq!(resolved.digest, digest);
    assert_eq!(
        resolved.docker_json()["Descriptor"]["digest"],
        digest.as_str()
    );
    let pinned = format!("{image}@{digest}");

    let mut web = task("task1", 1, &pinned, "exec sleep 600");
    web.spec.container_spec.as_mut().unwrap().secrets = vec![FileReference {
        file: Some(FileTarget {
            name: "db_password".to_owned(),
            uid: "0".to_owned(),
            gid: "0".to_owned(),
            mode: 0o400,
        }),
        secret_id: Some("sec1".to_owned()),
        secret_name: Some("db_password".to_owned()),
        ..Default::default()
    }];
    let mut healthy = task(
        "task2",
        2,
        &pinned,
        "sleep 2; touch /tmp/ready; exec sleep 600",
    );
    healthy.spec.container_spec.as_mut().unwrap().healthcheck = Some(HealthConfig {
        test: vec!["CMD-SHELL".to_owned(), "test -f /tmp/ready".to_owned()],
        interval: Some(200_000_000),
        retries: Some(3),
        start_period: Some(10_000_000_000),
        ..Default::default()
    });
    let missing = format!("127.0.0.1:{}/executor/missing:1", registry.port);
    let bad = task("task3", 3, &missing, "exec sleep 600");
    let mut assignment = Assignment {
        tasks: vec![web, healthy, bad],
        secrets: vec![FileData {
            id: "sec1".to_owned(),
            name: "db_password".to_owned(),
            data: b"s3cret".to_vec(),
        }],
        configs: Vec::new(),
    };

    let executor = EngineExecutor::new(socket.clone());
    let seen = drive(&executor, &mut assignment, 60, |t| {
        matches!(
            t.status.state,
            TaskState::Running | TaskState::Rejected | TaskState::Failed
        ) && (t.id != "task2" || t.status.state == TaskState::Running)
    })
    .await;
    let [web, healthy, bad] = &assignment.tasks[..] else {
        unreachable!()
    };
    assert_eq!(web.status.state, TaskState::Running, "{:?}", web.status);
    assert_eq!(seen[0][0], TaskState::Preparing, "{seen:?}");
    // Health-gated: starting until the check passed.
    assert!(seen[1].contains(&TaskState::Starting), "{seen:?}");
    assert_eq!(healthy.status.state, TaskState::Running);
    assert_eq!(bad.status.state, TaskState::Rejected, "{:?}", bad.status);
    assert!(bad.status.err.contains(&missing), "{:?}", bad.status);
    let cs = web.status.container_status.clone().unwrap();
    assert!(cs.pid > 0);
    assert_eq!(cs.container_id, "web.1.task1");

    // The container: labelled, its secret on its tmpfs with its mode.
    let list = containers(&client).await;
    assert_eq!(list.len(), 2, "{list:?}");
    let c = list.iter().find(|c| c.name == "web.1.task1").unwrap();
    assert_eq!(c.labels["com.docker.swarm.service.id"], "svc1");
    assert_eq!(c.labels["com.docker.swarm.node.id"], "node1");
    assert_eq!(c.labels["com.docker.swarm.task.name"], "web.1");
    assert_eq!(c.image_digest.as_deref(), Some(digest.as_str()));
    assert_eq!(
        exec(
            &client,
            "web.1.task1",
            &["/bin/cat", "/run/secrets/db_password"]
        )
        .await,
        (0, "s3cret".to_owned())
    );
    let (_, mode) = exec(
        &client,
        "web.1.task1",
        &["/bin/stat", "-c", "%a", "/run/secrets/db_password"],
    )
    .await;
    assert_eq!(mode.trim(), "400");

    // A new executor (the agent restarted) finds the same containers: nothing created twice.
    let executor = EngineExecutor::new(socket.clone());
    let again = executor.reconcile(&assignment).await;
    for o in &again {
        let task = assignment.tasks.iter().find(|t| t.id == o.task_id).unwrap();
        assert_eq!(o.status, task.status, "a status changed after a restart");
    }
    assert_eq!(containers(&client).await.len(), 2);

    // Killed outside the executor: failed with its exit code, and not started again.
    let _: serde_json::Value = client
        .call(
            hyper::Method::POST,
            "/v1/containers/web.1.task1/kill",
            Some(&json!({"signal": "KILL"})),
        )
        .await
        .unwrap();
    drive(&executor, &mut assignment, 10, |t| {
        t.id != "task1" || t.status.state == TaskState::Failed
    })
    .await;
    let web = &assignment.tasks[0];
    assert_eq!(web.status.container_status.as_ref().unwrap().exit_code, 137);
    assert_eq!(web.status.err, "task: non-zero exit (137)");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let observed = executor.reconcile(&assignment).await;
    assert_eq!(observed[0].status.state, TaskState::Failed);
    let c = containers(&client)
        .await
        .into_iter()
        .find(|c| c.name == "web.1.task1")
        .unwrap();
    assert_eq!(c.state, "exited");

    // The engine killed and started again takes its containers over.
    engine.kill9();
    engine.start();
    let again = executor.reconcile(&assignment).await;
    for o in &again {
        let task = assignment.tasks.iter().find(|t| t.id == o.task_id).unwrap();
        assert_eq!(
            o.status.state,
            task.status.state,
            "{o:?}\n{}",
            engine.stderr()
        );
    }
    let list = containers(&client).await;
    assert_eq!(list.len(), 2);
    let healthy_pid = assignment.tasks[1]
        .status
        .container_status
        .as_ref()
        .unwrap()
        .pid;
    assert_eq!(
        list.iter().find(|c| c.name == "web.2.task2").unwrap().pid,
        Some(healthy_pid)
    );
    // The ended one stays ended.
    let c = list.iter().find(|c| c.name == "web.1.task1").unwrap();
    assert_eq!((c.state.as_str(), c.exit_code), ("exited", Some(137)));

    // Shut down: stopped, reported shutdown.
    assignment.tasks[1].desired_state = TaskState::Shutdown;
    drive(&executor, &mut assignment, 10, |t| {
        t.id != "task2" || t.status.state == TaskState::Shutdown
    })
    .await;
    let c = containers(&client)
        .await
        .into_iter()
        .find(|c| c.name == "web.2.task2")
        .unwrap();
    assert_eq!(c.state, "stopped");

    // No longer assigned: removed.
    assignment.tasks.clear();
    assert!(executor.reconcile(&assignment).await.is_empty());
    assert!(containers(&client).await.is_empty());
}
