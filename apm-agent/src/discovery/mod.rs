//! Who is behind a pid: service names and the bounded table of processes seen.
pub mod cgroup;
pub mod host;
pub mod inventory;
pub mod kubernetes;
pub mod processes;
pub mod resource;
pub mod selection;
pub mod selectors;
pub mod service_name;
pub mod stats;
