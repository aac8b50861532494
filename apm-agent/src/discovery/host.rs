//! This host's name, as resources and the Kubernetes metadata name it.

/// This host's name: `K8S_NODE_NAME` when set (a DaemonSet pod has a UTS namespace of its
/// own, whose hostname is the pod's name, not the node's), else the kernel's hostname.
pub fn host_name() -> String {
    pick_host_name(
        std::env::var("K8S_NODE_NAME").ok(),
        std::fs::read_to_string("/proc/sys/kernel/hostname").ok(),
    )
}

fn pick_host_name(node_name: Option<String>, kernel: Option<String>) -> String {
    [node_name, kernel]
        .into_iter()
        .flatten()
        .map(|h| h.trim().to_owned())
        .find(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_name_wins_over_the_pods_hostname() {
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(
            pick_host_name(some("node-1"), some("apm-agent-x7\n")),
            "node-1"
        );
        assert_eq!(pick_host_name(some(" "), some("web-1\n")), "web-1");
        assert_eq!(pick_host_name(None, some("web-1\n")), "web-1");
        assert_eq!(pick_host_name(None, None), "localhost");
    }
}
