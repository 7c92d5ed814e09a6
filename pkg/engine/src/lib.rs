//! Slipway's container engine: a daemon that runs the service containers of an image
//! (`/containers/services/NAME/` bundles) through slipway-runtime, supervises them (restart
//! policies with backoff, dependencies, health checks, OOM reporting), runs commands inside
//! them (`exec`), runs containers from pulled images (`run`, `rm`), keeps their logs and
//! answers an HTTP/JSON API on a unix socket; and the client side of that API.

pub mod api;
pub mod cgroup;
pub mod cli;
pub mod client;
pub mod exec;
pub mod logs;
pub mod request;
pub mod run;
pub mod shim;
pub mod spec;
pub mod supervisor;

pub use supervisor::{ContainerInfo, Engine, EngineConfig, EngineError, Health, State};

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = slipway_layout::ENGINE_SOCKET;
