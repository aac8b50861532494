//! The kernel maps and programs one agent holds, read with bpftool: entry counts, memory,
//! and whether its programs are still loaded.
use std::{
    collections::BTreeSet,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

/// Ids of the BPF maps the process `pid` holds (its fds' `map_id` in fdinfo): bpftool only
/// names a map's owners when built with pid iteration, so an agent's own maps (other agents
/// may run on the host) are found this way.
pub fn map_ids(pid: u32) -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("map_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect()
}

/// `bpftool -j map show`, restricted to the maps `pid` holds.
fn owned_maps(pid: u32) -> Result<Vec<serde_json::Value>> {
    let out = Command::new("bpftool")
        .args(["-j", "map", "show"])
        .output()
        .context("running bpftool (apt-get install bpftool)")?;
    let maps: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let owned = map_ids(pid);
    Ok(maps
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["id"].as_u64().is_some_and(|id| owned.contains(&id)))
        .cloned()
        .collect())
}

/// Entries of the SOCKETS map owned by the agent `pid`.
pub fn kernel_sockets(pid: u32) -> Result<usize> {
    let id = owned_maps(pid)?
        .iter()
        .filter(|m| m["name"] == "SOCKETS")
        .find_map(|m| m["id"].as_u64())
        .context("no SOCKETS map held by the agent in `bpftool map show`")?;
    let out = Command::new("bpftool")
        .args(["-j", "map", "dump", "id", &id.to_string()])
        .output()?;
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(entries.as_array().map_or(0, Vec::len))
}

/// Kernel memory of the maps `pid` holds (`bytes_memlock`, summed): charged to the memory
/// cgroup, not part of the process's RSS.
pub fn map_bytes(pid: u32) -> Result<u64> {
    Ok(owned_maps(pid)?
        .iter()
        .filter_map(|m| m["bytes_memlock"].as_u64())
        .sum())
}

/// Ids of the BPF programs process `pid` holds (program and link fds: `prog_id:`).
pub fn programs_of(pid: u32) -> Result<Vec<u64>> {
    let mut ids: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))?
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Ids of the loaded programs, by `bpftool prog show`.
pub fn loaded_programs() -> Result<BTreeSet<u64>> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .context("bpftool")?;
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(progs
        .as_array()
        .map(|a| a.iter().filter_map(|p| p.get("id")?.as_u64()).collect())
        .unwrap_or_default())
}

/// Those of `ids` still loaded once they are gone or 15 s passed.
pub fn left_loaded(ids: &[u64]) -> Result<Vec<u64>> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let loaded = loaded_programs()?;
        let left: Vec<u64> = ids.iter().copied().filter(|i| loaded.contains(i)).collect();
        if left.is_empty() || Instant::now() > deadline {
            return Ok(left);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
