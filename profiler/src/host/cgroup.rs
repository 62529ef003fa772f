//! Which container (and Kubernetes pod) a process runs in, from its cgroup path.
//!
//! Container runtimes name the cgroup of each container after its id, and the kubelet names
//! each pod's cgroup after the pod's UID; nothing else on the host says it without asking the
//! runtime. The names, innermost first wins (a container nested in another is the inner one):
//!
//! | runtime | systemd cgroup driver | cgroupfs driver |
//! |---|---|---|
//! | Docker | `docker-<id>.scope` | `/docker/<id>` |
//! | containerd (CRI) | `cri-containerd-<id>.scope` | `…/pod<uid>/<id>` |
//! | CRI-O | `crio-<id>.scope` (`crio-conmon-<id>.scope` is its monitor, not the container) | `…/pod<uid>/<id>` |
//! | Podman | `libpod-<id>.scope` (and a `container` child with `--systemd`) | `/libpod_parent/libpod-<id>` |
//! | Kubernetes pod | `kubepods[-<qos>]-pod<uid with _ for ->.slice` | `/kubepods/[<qos>/]pod<uid>` |
//!
//! Ids are 64 hex digits in all of them. On a cgroup v2 host the path is the `0::` line of
//! `/proc/PID/cgroup`; on a v1 host the first named hierarchy whose path says more than `/`.
//! Read once per process, when it is first seen: never on the sample path.

/// A process's cgroup and what its name tells.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CgroupIdentity {
    /// The cgroup path as the host sees it (`/system.slice/docker-3f…e1.scope`).
    pub cgroup: String,
    /// Container id (64 hex digits), when a runtime's naming is found.
    pub container_id: Option<String>,
    /// `docker`, `containerd`, `cri-o` or `podman`; None when the path names an id but not
    /// who made it (the cgroupfs driver under a Kubernetes pod).
    pub runtime: Option<&'static str>,
    /// Kubernetes pod UID, with dashes.
    pub pod_uid: Option<String>,
}

/// Reads `/proc/PID/cgroup`; None when the process is gone or has no cgroup.
pub fn identity(pid: u32) -> Option<CgroupIdentity> {
    parse_proc_cgroup(&std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
}

/// The cgroup path from a `/proc/PID/cgroup` text (v2's `0::` line, else a v1 hierarchy's) and
/// what its components name.
pub fn parse_proc_cgroup(text: &str) -> Option<CgroupIdentity> {
    let mut unified = None;
    let mut v1: Vec<&str> = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
        if id == "0" && controllers.is_empty() {
            unified = Some(path);
        } else if path != "/" {
            v1.push(path);
        }
    }
    // A hybrid host (v1 controllers plus the v2 `0::` line) may leave the v2 path at `/`: then
    // the v1 hierarchy that names a container or pod, else the longest path (hierarchies
    // usually agree; one a service manager set apart says less).
    if let Some(u) = unified.filter(|u| *u != "/") {
        return Some(from_path(u));
    }
    let named = v1.iter().map(|p| from_path(p)).find(|i| i.container_id.is_some() || i.pod_uid.is_some());
    if named.is_some() {
        return named;
    }
    match v1.iter().max_by_key(|p| p.len()) {
        Some(p) => Some(from_path(p)),
        None => unified.map(from_path),
    }
}

/// What a cgroup path's components name (see the module documentation).
pub fn from_path(cgroup: &str) -> CgroupIdentity {
    let mut out = CgroupIdentity { cgroup: cgroup.to_string(), ..Default::default() };
    let components: Vec<&str> = cgroup.split('/').filter(|c| !c.is_empty()).collect();
    for (i, c) in components.iter().enumerate().rev() {
        if out.container_id.is_none()
            && let Some((id, runtime)) = container_component(c, i.checked_sub(1).map(|p| components[p]))
        {
            out.container_id = Some(id.to_string());
            out.runtime = runtime;
        }
        if out.pod_uid.is_none() {
            out.pod_uid = pod_component(c);
        }
    }
    out
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// A component naming a container: `<prefix>-<id>.scope` (systemd driver), `<prefix>-<id>`
/// (Podman's cgroupfs), or a bare id whose parent tells the runtime (cgroupfs).
fn container_component<'a>(c: &'a str, parent: Option<&str>) -> Option<(&'a str, Option<&'static str>)> {
    const PREFIXES: [(&str, &str); 4] =
        [("docker-", "docker"), ("cri-containerd-", "containerd"), ("crio-", "cri-o"), ("libpod-", "podman")];
    let name = c.strip_suffix(".scope").unwrap_or(c);
    for (prefix, runtime) in PREFIXES {
        if let Some(id) = name.strip_prefix(prefix).filter(|id| is_container_id(id)) {
            return Some((id, Some(runtime)));
        }
    }
    if is_container_id(c) {
        let runtime = match parent {
            Some("docker") => Some("docker"),
            Some("libpod_parent") => Some("podman"),
            _ => None,
        };
        return Some((c, runtime));
    }
    None
}

/// A component naming a Kubernetes pod: `pod<uid>` (cgroupfs) or
/// `kubepods[-<qos>]-pod<uid_with_underscores>.slice` (systemd).
fn pod_component(c: &str) -> Option<String> {
    let uid = if let Some(slice) = c.strip_suffix(".slice") {
        slice
            .strip_prefix("kubepods")
            .and_then(|rest| rest.rsplit_once("-pod"))
            .map(|(_, uid)| uid.replace('_', "-"))?
    } else {
        c.strip_prefix("pod")?.to_string()
    };
    let uuid_shape = uid.len() == 36
        && uid
            .bytes()
            .enumerate()
            .all(|(i, b)| if [8, 13, 18, 23].contains(&i) { b == b'-' } else { b.is_ascii_hexdigit() });
    uuid_shape.then_some(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899";
    const POD: &str = "7c1b2a3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";

    fn id_of(path: &str) -> (Option<String>, Option<&'static str>, Option<String>) {
        let i = from_path(path);
        (i.container_id, i.runtime, i.pod_uid)
    }

    #[test]
    fn runtimes_with_the_systemd_driver() {
        for (prefix, runtime) in
            [("docker", "docker"), ("cri-containerd", "containerd"), ("crio", "cri-o"), ("libpod", "podman")]
        {
            let path = format!("/system.slice/{prefix}-{ID}.scope");
            assert_eq!(id_of(&path), (Some(ID.into()), Some(runtime), None), "{path}");
        }
        // Podman with --systemd: the processes sit in a `container` child.
        assert_eq!(id_of(&format!("/machine.slice/libpod-{ID}.scope/container")).0.as_deref(), Some(ID));
        // CRI-O's monitor is not the container.
        assert_eq!(id_of(&format!("/system.slice/crio-conmon-{ID}.scope")).0, None);
    }

    #[test]
    fn kubernetes_pods_and_their_containers() {
        let uid = POD.replace('-', "_");
        let systemd = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(id_of(&systemd), (Some(ID.into()), Some("containerd"), Some(POD.into())));
        let guaranteed = format!("/kubepods.slice/kubepods-pod{uid}.slice/crio-{ID}.scope");
        assert_eq!(id_of(&guaranteed), (Some(ID.into()), Some("cri-o"), Some(POD.into())));
        // cgroupfs driver: dashes kept, the runtime is not named.
        let cgroupfs = format!("/kubepods/besteffort/pod{POD}/{ID}");
        assert_eq!(id_of(&cgroupfs), (Some(ID.into()), None, Some(POD.into())));
        // The pod's own cgroup (its pause container's parent): a pod, no container.
        assert_eq!(id_of(&format!("/kubepods/pod{POD}")), (None, None, Some(POD.into())));
    }

    #[test]
    fn cgroupfs_docker_and_podman() {
        assert_eq!(id_of(&format!("/docker/{ID}")), (Some(ID.into()), Some("docker"), None));
        assert_eq!(id_of(&format!("/libpod_parent/libpod-{ID}")), (Some(ID.into()), Some("podman"), None));
        // Docker in Docker: the inner container.
        let inner = ID.replace('3', "4");
        assert_eq!(id_of(&format!("/docker/{ID}/docker/{inner}")).0, Some(inner));
    }

    #[test]
    fn host_processes_name_no_container() {
        for path in ["/", "/user.slice/user-0.slice/session-1.scope", "/system.slice/ssh.service", "/init.scope"] {
            assert_eq!(id_of(path), (None, None, None), "{path}");
        }
        // Almost ids: too short, upper case, not hex.
        assert_eq!(id_of(&format!("/docker/{}", &ID[..63])).0, None);
        assert_eq!(id_of(&format!("/docker/{}", ID.to_uppercase())).0, None);
        assert_eq!(id_of("/kubepods/podnot-a-uid").2, None);
    }

    #[test]
    fn proc_cgroup_v1_v2_and_hybrid() {
        let v2 = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(parse_proc_cgroup(&v2).unwrap().cgroup, format!("/system.slice/docker-{ID}.scope"));
        let v1 = format!("12:pids:/docker/{ID}\n11:cpuset:/\n4:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n");
        let i = parse_proc_cgroup(&v1).unwrap();
        assert_eq!((i.container_id.as_deref(), i.runtime), (Some(ID), Some("docker")));
        let hybrid = format!("5:memory:/kubepods/pod{POD}/{ID}\n0::/\n");
        assert_eq!(parse_proc_cgroup(&hybrid).unwrap().pod_uid.as_deref(), Some(POD));
        // A v1 host whose service manager keeps processes in its own, longer, memory cgroup.
        let set_apart =
            format!("8:pids:/docker/{ID}\n4:memory:/process_api/cc3bc6be20adb177faefe4ef0245f96d/x/y/z\n0::/\n");
        assert_eq!(parse_proc_cgroup(&set_apart).unwrap().container_id.as_deref(), Some(ID));
        assert_eq!(parse_proc_cgroup("0::/\n").unwrap().cgroup, "/");
        assert_eq!(parse_proc_cgroup(""), None);
    }

    #[test]
    fn reads_our_own_cgroup() {
        let me = identity(std::process::id()).expect("/proc/self/cgroup");
        assert!(me.cgroup.starts_with('/'), "{me:?}");
    }
}
