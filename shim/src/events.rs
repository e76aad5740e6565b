//! Task events sent to containerd (`Events/Forward` on TTRPC_ADDRESS).
//! A failed publish is logged, never fatal: containerd also learns exits
//! through Wait.

use containerd_shim::publisher::RemotePublisher;
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::topics;

use crate::io::StdioPaths;

/// Publishes events of one namespace; `None` publisher (unit tests) drops them.
#[derive(Clone)]
pub struct Events {
    publisher: Option<std::sync::Arc<RemotePublisher>>,
    namespace: String,
}

impl Events {
    pub fn new(publisher: Option<RemotePublisher>, namespace: &str) -> Events {
        Events {
            publisher: publisher.map(std::sync::Arc::new),
            namespace: namespace.to_string(),
        }
    }

    async fn send(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let Some(p) = &self.publisher else { return };
        let ctx = containerd_shim::Context::default();
        if let Err(e) = p.publish(ctx, topic, &self.namespace, event).await {
            tracing::warn!(topic, error = %e, "publishing an event to containerd");
        } else {
            tracing::debug!(topic, "event published");
        }
    }

    pub async fn create(&self, id: &str, bundle: &str, stdio: &StdioPaths, pid: u32) {
        let ev = TaskCreate {
            container_id: id.to_string(),
            bundle: bundle.to_string(),
            io: Some(TaskIO {
                stdin: stdio.stdin.clone(),
                stdout: stdio.stdout.clone(),
                stderr: stdio.stderr.clone(),
                terminal: stdio.terminal,
                ..Default::default()
            })
            .into(),
            pid,
            ..Default::default()
        };
        self.send(topics::TASK_CREATE_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    pub async fn start(&self, id: &str, pid: u32) {
        let ev = TaskStart {
            container_id: id.to_string(),
            pid,
            ..Default::default()
        };
        self.send(topics::TASK_START_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    pub async fn exec_added(&self, id: &str, exec_id: &str) {
        let ev = TaskExecAdded {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        self.send(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    pub async fn exec_started(&self, id: &str, exec_id: &str, pid: u32) {
        let ev = TaskExecStarted {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            pid,
            ..Default::default()
        };
        self.send(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    /// `process_id` is the exec id, or the container id for the init process.
    pub async fn exit(&self, id: &str, process_id: &str, pid: u32, status: u32, at: &Timestamp) {
        let ev = TaskExit {
            container_id: id.to_string(),
            id: process_id.to_string(),
            pid,
            exit_status: status,
            exited_at: Some(at.clone()).into(),
            ..Default::default()
        };
        self.send(topics::TASK_EXIT_EVENT_TOPIC, Box::new(ev)).await;
    }

    pub async fn delete(&self, id: &str, pid: u32, status: u32, at: Option<&Timestamp>) {
        let ev = TaskDelete {
            container_id: id.to_string(),
            pid,
            exit_status: status,
            exited_at: at.cloned().into(),
            ..Default::default()
        };
        self.send(topics::TASK_DELETE_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    pub async fn oom(&self, id: &str) {
        let ev = TaskOOM {
            container_id: id.to_string(),
            ..Default::default()
        };
        self.send(topics::TASK_OOM_EVENT_TOPIC, Box::new(ev)).await;
    }

    pub async fn paused(&self, id: &str) {
        let ev = TaskPaused {
            container_id: id.to_string(),
            ..Default::default()
        };
        self.send(topics::TASK_PAUSED_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    pub async fn resumed(&self, id: &str) {
        let ev = TaskResumed {
            container_id: id.to_string(),
            ..Default::default()
        };
        self.send(topics::TASK_RESUMED_EVENT_TOPIC, Box::new(ev))
            .await;
    }
}

/// The current time as a protobuf Timestamp.
pub fn now() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    }
}
