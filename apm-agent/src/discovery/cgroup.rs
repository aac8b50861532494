//! What a process's `/proc/<pid>/cgroup` says about its container: the container id, and in
//! Kubernetes the pod UID.
//!
//! Container runtimes name a container's cgroup after its id; the layout depends on the
//! runtime and on the cgroup driver (systemd or cgroupfs):
//!
//! | runtime, driver | cgroup path (last segments) |
//! |---|---|
//! | docker, cgroupfs (v1) | `/docker/<id>` |
//! | docker, systemd | `/system.slice/docker-<id>.scope` |
//! | containerd (k8s), systemd | `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope` |
//! | containerd (k8s), cgroupfs | `/kubepods/besteffort/pod<uid>/<id>` |
//! | cri-o | `.../crio-<id>.scope` (its monitor: `crio-conmon-<id>.scope`, not the container) |
//! | podman, systemd | `.../libpod-<id>.scope` (possibly with a `/container` child; `libpod-conmon-<id>.scope` is the monitor) |
//! | podman, cgroupfs | `/libpod_parent/libpod-<id>`, in a pod `/libpod_parent/<pod id>/libpod-<id>` (the monitors: `/libpod_parent/conmon`, `/libpod_parent/<pod id>/conmon`) |
//!
//! Paths are relative to the reader's cgroup namespace: an agent in a container of its own
//! sees `0::/../../kubepods-.../cri-containerd-<id>.scope`. `..` segments are skipped, so the
//! ids are found all the same.

/// Length of a container id (sha256 in hex) in every runtime above.
const ID_LEN: usize = 64;

/// The cgroup path of each line of a `/proc/<pid>/cgroup` file
/// (`hierarchy-id:controllers:path`; the path itself may hold `:`).
fn paths(cgroup: &str) -> impl Iterator<Item = &str> {
    cgroup.lines().filter_map(|line| line.splitn(3, ':').nth(2))
}

/// The container id in a `/proc/<pid>/cgroup` file, or `None` for a process outside any
/// container (and for container runtime monitors such as `crio-conmon-<id>.scope`).
pub fn container_id(cgroup: &str) -> Option<String> {
    paths(cgroup).find_map(|path| {
        // Deepest segment first: a runtime may nest a child (`libpod-<id>.scope/container`).
        path.rsplit('/')
            .filter(|s| !s.is_empty())
            .enumerate()
            .find_map(|(depth, segment)| segment_id(segment, depth == 0))
            .map(str::to_owned)
    })
}

/// The container id named by one cgroup path segment (`deepest`: the process's own cgroup),
/// if it names one.
fn segment_id(segment: &str, deepest: bool) -> Option<&str> {
    let segment = segment.strip_suffix(".scope").unwrap_or(segment);
    if is_container_id(segment) {
        // A bare id is a container's only as the process's own cgroup (`/docker/<id>`,
        // `/kubepods/besteffort/pod<uid>/<id>`). Above another cgroup it is a podman pod's:
        // `/libpod_parent/<pod id>/conmon` holds the pod's monitors, not a container.
        return deepest.then_some(segment);
    }
    let (prefix, id) = segment.rsplit_once('-')?;
    // The runtime's monitor process (conmon) has a cgroup named after the container it
    // watches; it is not the container.
    if prefix.ends_with("conmon") || !is_container_id(id) {
        return None;
    }
    Some(id)
}

fn is_container_id(s: &str) -> bool {
    s.len() == ID_LEN && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The UID of the Kubernetes pod a process runs in, from the pod's cgroup
/// (`kubepods-besteffort-pod<uid>.slice` with the UID's `-` written `_` by the systemd
/// driver, or `pod<uid>` with the cgroupfs driver). The fallback key when the container id is
/// not known yet (the pod's status lags its containers' start).
pub fn pod_uid(cgroup: &str) -> Option<String> {
    paths(cgroup).find_map(|path| path.split('/').find_map(segment_pod_uid))
}

fn segment_pod_uid(segment: &str) -> Option<String> {
    let (segment, systemd) = match segment.strip_suffix(".slice") {
        // `kubepods-pod<uid>.slice` (guaranteed QoS) or `kubepods-<qos>-pod<uid>.slice`.
        Some(s) => (s.rsplit('-').next()?, true),
        None => (segment, false),
    };
    let uid = segment.strip_prefix("pod")?;
    let uid = if systemd {
        uid.replace('_', "-")
    } else {
        uid.to_owned()
    };
    is_pod_uid(&uid).then_some(uid)
}

/// A UUID (`8-4-4-4-12` hex digits), or the 32-hex-digit hash static pods are named by.
fn is_pod_uid(s: &str) -> bool {
    let b = s.as_bytes();
    match b.len() {
        36 => b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        }),
        32 => b.iter().all(u8::is_ascii_hexdigit),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e2c1b0a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f";
    const UID: &str = "8d5b7c2e-1f3a-4b6c-9d8e-7f6a5b4c3d2e";
    /// A podman pod's id.
    const POD: &str = "db9abe1b586cfbc9962a7ca7cfc7b6a2759d98cfd81389a7098704a9ffaa1083";

    #[test]
    fn container_ids_of_every_runtime_and_driver() {
        let uid_ = UID.replace('-', "_");
        let cases = [
            // docker, cgroupfs driver, cgroup v1: one line per hierarchy.
            format!(
                "12:pids:/docker/{ID}\n11:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n0::/system.slice/containerd.service\n"
            ),
            // docker, systemd driver, cgroup v2.
            format!("0::/system.slice/docker-{ID}.scope\n"),
            // containerd under Kubernetes, systemd driver.
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope\n"
            ),
            // containerd under Kubernetes, cgroupfs driver.
            format!("0::/kubepods/besteffort/pod{UID}/{ID}\n"),
            // cri-o, systemd driver.
            format!("0::/kubepods.slice/kubepods-pod{uid_}.slice/crio-{ID}.scope\n"),
            // podman (cgroup v2 with a `container` child cgroup).
            format!("0::/machine.slice/libpod-{ID}.scope/container\n"),
            format!(
                "0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope\n"
            ),
            // podman with the cgroupfs manager on a hybrid v1 + v2 host (captured from
            // `podman --cgroup-manager=cgroupfs run`), alone and in a pod.
            format!(
                "9:name=systemd:/libpod_parent/libpod-{ID}\n4:memory:/libpod_parent/libpod-{ID}\n1:cpu:/libpod_parent/libpod-{ID}\n0::/libpod_parent/libpod-{ID}\n"
            ),
            format!(
                "4:memory:/libpod_parent/{POD}/libpod-{ID}\n0::/libpod_parent/{POD}/libpod-{ID}\n"
            ),
            // Seen from the agent's own cgroup namespace.
            format!(
                "0::/../../kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{ID}.scope\n"
            ),
        ];
        for cg in &cases {
            assert_eq!(container_id(cg).as_deref(), Some(ID), "{cg}");
        }
    }

    #[test]
    fn non_containers_and_monitors_have_no_id() {
        let uid_ = UID.replace('-', "_");
        for cg in [
            "0::/user.slice/user-1000.slice/session-3.scope\n".to_owned(),
            "0::/system.slice/nginx.service\n".to_owned(),
            "0::/\n".to_owned(),
            "garbage".to_owned(),
            format!("0::/kubepods.slice/kubepods-pod{uid_}.slice/crio-conmon-{ID}.scope\n"),
            format!("0::/machine.slice/libpod-conmon-{ID}.scope\n"),
            // podman's monitors with the cgroupfs manager: alone, and in a pod (whose cgroup
            // is named by the pod's id, bare).
            "9:name=systemd:/\n8:pids:/libpod_parent/conmon\n0::/libpod_parent/conmon\n".to_owned(),
            format!("4:memory:/libpod_parent/{POD}/conmon\n0::/libpod_parent/{POD}/conmon\n"),
            // One hex digit short.
            format!("0::/docker/{}\n", &ID[1..]),
        ] {
            assert_eq!(container_id(&cg), None, "{cg}");
        }
    }

    #[test]
    fn pod_uids_from_both_drivers() {
        let uid_ = UID.replace('-', "_");
        for cg in [
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope\n"
            ),
            format!("0::/kubepods.slice/kubepods-pod{uid_}.slice/crio-{ID}.scope\n"),
            format!("0::/kubepods/besteffort/pod{UID}/{ID}\n"),
            format!("11:memory:/kubepods/burstable/pod{UID}/{ID}\n"),
            // The pod's sandbox or a process in the pod cgroup itself.
            format!("0::/kubepods/pod{UID}\n"),
        ] {
            assert_eq!(pod_uid(&cg).as_deref(), Some(UID), "{cg}");
        }
        let static_pod = "0::/kubepods/burstable/pod0123456789abcdef0123456789abcdef/x\n";
        assert_eq!(
            pod_uid(static_pod).as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        for cg in [
            format!("0::/system.slice/docker-{ID}.scope\n"),
            "0::/user.slice/user-0.slice/session-1.scope\n".to_owned(),
            "0::/kubepods.slice/kubepods-burstable.slice\n".to_owned(),
            "0::/podman/podnotauid\n".to_owned(),
        ] {
            assert_eq!(pod_uid(&cg), None, "{cg}");
        }
    }
}
