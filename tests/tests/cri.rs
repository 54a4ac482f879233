//! Kubernetes' path to kata-rs: containerd's CRI plugin with the runtime
//! handler `kata-rs`, driven over the CRI API as a kubelet drives it, with
//! a CNI plugin (tests/cni/) giving each pod a veth as CNI plugins do.
//!
//! KATA_RS_TEST_CRI_HANDLER chooses the handler: `kata-rs` (in VM mode,
//! where tests/run.sh runs VM tests, one microVM per pod; natively, in
//! namespace isolation, one host agent per pod) or `runc`, the reference,
//! which also proves the harness (CNI plugin, pause image, CRI client)
//! against a known-good runtime.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use kata_rs_tests::cgroup;
use kata_rs_tests::cri::v1::*;
use kata_rs_tests::cri::{self, Cri};
use kata_rs_tests::oci::{isolation, processes_mentioning, runtime_binary};
use kata_rs_tests::peers::{wait_until, Containerd, IMAGE, TIMEOUT};
use kata_rs_tests::pod::{assert_no_container_left, kill_the_one, pod_backend, pod_dir};

/// Where the CRI tests run: a containerd with its CRI plugin, and the
/// runtime handler pods get.
struct Node {
    containerd: Containerd,
    cri: Cri,
    handler: &'static str,
    logs: tempfile::TempDir,
}

/// The handler is kata-rs in VM isolation, runc (the reference) in
/// namespace isolation unless KATA_RS_TEST_CRI_HANDLER=kata-rs says
/// otherwise (kata-rs's shim with its agent on the host).
fn node() -> Node {
    let handler = match std::env::var("KATA_RS_TEST_CRI_HANDLER").as_deref() {
        Ok("kata-rs") => "kata-rs",
        Ok("runc") => "runc",
        Ok(other) => panic!("KATA_RS_TEST_CRI_HANDLER={other}: runc or kata-rs"),
        Err(_) if isolation() == "vm" => "kata-rs",
        Err(_) => "runc",
    };
    println!("runtime handler: {handler}");
    let shim_dir = runtime_binary()
        .parent()
        .map(Path::to_path_buf)
        .expect("the runtime binary's directory");
    let containerd = Containerd::start_with_cri(&shim_dir);
    let cri = containerd.cri();
    Node {
        containerd,
        cri,
        handler,
        logs: tempfile::Builder::new()
            .prefix("kata-rs-cri-logs-")
            .tempdir()
            .unwrap(),
    }
}

impl Node {
    /// The handler is kata-rs's, whatever its isolation.
    fn kata_rs(&self) -> bool {
        self.handler == "kata-rs"
    }

    /// The pods run in microVMs.
    fn vm(&self) -> bool {
        self.kata_rs() && isolation() == "vm"
    }

    fn pod_config(&self, name: &str) -> PodSandboxConfig {
        let log_directory = self.logs.path().join(name);
        std::fs::create_dir_all(&log_directory).unwrap();
        cri::pod_config(name, &log_directory)
    }

    /// Creates and starts container `name` running `cmd` in `pod`.
    fn start(&self, pod: &str, pod_config: &PodSandboxConfig, name: &str, cmd: &[&str]) -> String {
        self.start_config(pod, pod_config, &cri::container_config(name, IMAGE, cmd))
    }

    /// Creates and starts the container `config` describes in `pod`.
    fn start_config(
        &self,
        pod: &str,
        pod_config: &PodSandboxConfig,
        config: &ContainerConfig,
    ) -> String {
        let name = &config.metadata.as_ref().expect("a container name").name;
        let id = self
            .cri
            .create_container(pod, config, pod_config)
            .unwrap_or_else(|e| panic!("create {name}: {e}"));
        self.cri
            .start_container(&id)
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        id
    }

    /// Runs `cmd` in container `id`; its exit code and stdout.
    fn exec(&self, id: &str, cmd: &[&str]) -> (i32, String) {
        let out = self
            .cri
            .exec_sync(id, cmd)
            .unwrap_or_else(|e| panic!("exec {cmd:?}: {e}"));
        (
            out.exit_code,
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// Stops and removes `pod`, then checks nothing of it is left on the
    /// host: no process, no pod directory, no veth.
    fn remove(&self, pod: &str) {
        self.cri.stop_pod(pod).expect("StopPodSandbox");
        self.cri.remove_pod(pod).expect("RemovePodSandbox");
        let deadline = Instant::now() + TIMEOUT;
        while !processes_mentioning(pod).is_empty() {
            assert!(
                Instant::now() < deadline,
                "the pod's host processes did not end: {:?}",
                processes_mentioning(pod)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!pod_dir(pod).exists(), "the pod directory is left");
        self.containerd.assert_no_shim_socket(pod);
        let host_end = host_veth(pod);
        assert!(
            !Path::new("/sys/class/net").join(&host_end).exists(),
            "the pod's veth {host_end} is left"
        );
    }

    /// Checks CRI and containerd know of no pod and no container, and that
    /// containerd leaves nothing when it stops.
    fn finish(self) {
        assert_eq!(self.cri.pods().unwrap(), Vec::<String>::new(), "pods left");
        assert_eq!(
            self.cri.containers().unwrap(),
            Vec::<String>::new(),
            "containers left"
        );
        self.containerd.finish();
    }

    /// Runs pod `name` with one container running `sleep`: their ids.
    fn sleeping_pod(&self, name: &str) -> (String, String) {
        let config = self.pod_config(name);
        let pod = self
            .cri
            .run_pod(&config, self.handler)
            .unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e}"));
        let id = self.start(&pod, &config, "sleeper", &["sleep", "1000"]);
        (pod, id)
    }

    /// Waits until CRI sees container `id` exited; its status then.
    fn exited(&self, id: &str) -> ContainerStatus {
        wait_until(TIMEOUT, &format!("CRI to see {id} exited"), || {
            self.cri
                .container_status(id)
                .is_ok_and(|s| s.state == ContainerState::ContainerExited as i32)
        });
        self.cri.container_status(id).unwrap()
    }

    fn boot_id(&self, id: &str) -> String {
        self.exec(id, &["cat", "/proc/sys/kernel/random/boot_id"]).1
    }
}

/// The status of a container the OOM killer ended, as a kubelet shows it.
fn assert_oom_killed(status: &ContainerStatus) {
    assert_eq!(
        (status.exit_code, status.reason.as_str()),
        (137, "OOMKilled"),
        "{status:?}"
    );
}

/// The host end of the veth the test CNI plugin made for `pod`'s eth0.
fn host_veth(pod: &str) -> String {
    use std::io::Write;
    let mut sum = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    sum.stdin
        .take()
        .unwrap()
        .write_all(format!("{pod}eth0").as_bytes())
        .unwrap();
    let out = sum.wait_with_output().unwrap();
    format!("krs{}", &String::from_utf8_lossy(&out.stdout)[..12])
}

/// GET `path` from an HTTP server at `addr`: the body.
fn http_get(addr: SocketAddr, path: &str) -> String {
    let deadline = Instant::now() + TIMEOUT;
    let mut stream = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => panic!("connect to {addr}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    };
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_else(|| panic!("no HTTP response from {addr}: {response:?}"))
}

/// An HTTP server on `ip` that answers one request with `body`: its
/// address, and the thread that ends after answering.
fn serve_once(ip: IpAddr, body: String) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("listen on {ip}: {e}"));
    let addr = listener.local_addr().unwrap();
    let thread = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut request = [0u8; 1024];
        let _ = stream.read(&mut request).unwrap();
        write!(
            stream,
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
    });
    (addr, thread)
}

#[test]
fn a_pod_of_two_containers_shares_one_vm_its_network_and_logs() {
    let node = node();
    let config = node.pod_config("web");
    let pod = node
        .cri
        .run_pod(&config, node.handler)
        .expect("RunPodSandbox");
    let web = node.start(
        &pod,
        &config,
        "web",
        &[
            "sh",
            "-c",
            "mkdir /www && echo hello-from-web >/www/index && seq 1 40000 >/www/big && \
             echo web-ready && exec httpd -f -p 8080 -h /www",
        ],
    );
    let mut client_config = cri::container_config(
        "client",
        IMAGE,
        &["sh", "-c", "echo to-err >&2; exec sleep 1000"],
    );
    client_config.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            seccomp: Some(SecurityProfile {
                profile_type: security_profile::ProfileType::RuntimeDefault as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let client = node.start_config(&pod, &config, &client_config);

    // An exec (ExecSync) runs under the container's RuntimeDefault seccomp
    // filter, as the container's init (its `sleep`; the pod shares one pid
    // namespace) does.
    let seccomp =
        "for p in $(pidof sleep); do tr '\\0' ' ' </proc/$p/cmdline | grep -q '^sleep 1000' \
                   && grep ^Seccomp: /proc/$p/status; done; grep ^Seccomp: /proc/self/status";
    assert_eq!(
        node.exec(&client, &["sh", "-c", seccomp]),
        (0, "Seccomp:\t2\nSeccomp:\t2\n".into())
    );

    // The second container reaches the first on the pod's localhost.
    let deadline = Instant::now() + TIMEOUT;
    let fetched = loop {
        let (code, out) = node.exec(&client, &["wget", "-qO-", "http://127.0.0.1:8080/index"]);
        if code == 0 || Instant::now() > deadline {
            break (code, out);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(fetched, (0, "hello-from-web\n".into()));

    // The pod's network is CNI's, dual-stack: the host reaches the pod's
    // addresses, and the pod reaches the host end of its veth, over IPv4
    // and IPv6.
    let network = node
        .cri
        .pod_status(&pod)
        .expect("PodSandboxStatus")
        .network
        .expect("the pod's network status");
    let pod_ip: Ipv4Addr = network.ip.parse().expect("the pod's IPv4 address");
    let pod_ip6: Ipv6Addr = network
        .additional_ips
        .first()
        .and_then(|a| a.ip.parse().ok())
        .expect("the pod's IPv6 address");
    let host_end = IpAddr::V4(Ipv4Addr::from(u32::from(pod_ip) - 1));
    let host_end6 = IpAddr::V6(Ipv6Addr::from(u128::from(pod_ip6) - 1));
    for (pod_addr, host_addr) in [(IpAddr::V4(pod_ip), host_end), (pod_ip6.into(), host_end6)] {
        assert_eq!(
            http_get(SocketAddr::from((pod_addr, 8080)), "/index"),
            "hello-from-web\n",
            "from the host to {pod_addr}"
        );
        let server = serve_once(host_addr, "hello-from-the-host\n".into());
        let url = format!("http://{}/", server.0);
        assert_eq!(
            node.exec(&client, &["wget", "-qO-", &url]),
            (0, "hello-from-the-host\n".into()),
            "from the pod to {url}"
        );
        server.1.join().unwrap();
    }

    // CNI's MTU is the pod's (a VM's NIC is told it), and 229 kB cross
    // each way whole in frames of that size.
    assert_eq!(
        node.exec(&client, &["cat", "/sys/class/net/eth0/mtu"]),
        (0, "9000\n".into())
    );
    let big: String = (1..=40000).map(|n| format!("{n}\n")).collect();
    assert!(
        http_get(SocketAddr::from((pod_ip, 8080)), "/big") == big,
        "the pod's 229 kB came to the host cut or changed"
    );
    let server = serve_once(host_end, big);
    let fetch = format!(
        "wget -qO /tmp/big http://{}/ && seq 1 40000 | cmp - /tmp/big && echo same",
        server.0
    );
    assert_eq!(
        node.exec(&client, &["sh", "-c", &fetch]),
        (0, "same\n".into()),
        "the host's 229 kB in the pod"
    );
    server.1.join().unwrap();

    // The gateway's MAC, which CNI set as a permanent neighbour, is the
    // pod's too: it never asks for it (ATF_COM | ATF_PERM is flags 0x6).
    let host_mac =
        std::fs::read_to_string(format!("/sys/class/net/{}/address", host_veth(&pod))).unwrap();
    let (_, arp) = node.exec(&client, &["cat", "/proc/net/arp"]);
    assert!(
        arp.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() == 6
                && f[0] == host_end.to_string()
                && f[2] == "0x6"
                && f[3] == host_mac.trim()
                && f[5] == "eth0"
        }),
        "no permanent neighbour {host_end} at {host_mac}: {arp}"
    );

    // One kernel under both; in VM mode, not the host's. kata-rs's shim
    // serves the pod with one VMM, or one agent on the host.
    let boot_id = |id: &str| node.exec(id, &["cat", "/proc/sys/kernel/random/boot_id"]).1;
    assert_eq!(boot_id(&web), boot_id(&client));
    let host = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(boot_id(&web) == host, !node.vm(), "on the host's kernel");
    if node.kata_rs() {
        let backend = pod_backend(&pod, node.vm());
        assert_eq!(
            backend.len(),
            1,
            "one VMM or host agent for the pod: {backend:?}"
        );
    }

    // The pod's hostname and DNS, and an exec's own exit code.
    assert_eq!(node.exec(&client, &["hostname"]), (0, "web\n".into()));
    let (_, resolv) = node.exec(&client, &["cat", "/etc/resolv.conf"]);
    assert!(
        resolv.contains("nameserver 10.213.255.254") && resolv.contains("search kata-rs.test"),
        "{resolv:?}"
    );
    assert_eq!(node.exec(&client, &["sh", "-c", "exit 7"]).0, 7);

    // Logs in CRI's format at the path CRI asked for: time, stream, tag.
    let log = |name: &str| {
        std::fs::read_to_string(Path::new(&config.log_directory).join(format!("{name}.log")))
            .unwrap_or_default()
    };
    wait_until(TIMEOUT, "the containers' logs", || {
        log("web").contains(" stdout F web-ready\n") && log("client").contains(" stderr F to-err\n")
    });

    let status = node.cri.container_status(&web).expect("ContainerStatus");
    assert_eq!(status.state, ContainerState::ContainerRunning as i32);
    let stats = node.cri.container_stats(&web).expect("ContainerStats");
    let memory = stats
        .memory
        .and_then(|m| m.working_set_bytes)
        .map(|v| v.value)
        .unwrap_or(0);
    assert!(memory > 0, "no memory use in the stats: {stats:?}");

    node.remove(&pod);
    node.finish();
}

#[test]
fn pods_keep_running_across_a_containerd_restart() {
    let mut node = node();
    let (pod, id) = node.sleeping_pod("restart");
    let boot_id = node.boot_id(&id);
    node.containerd.restart();
    node.cri = node.containerd.cri();
    let status = node.cri.container_status(&id).expect("ContainerStatus");
    assert_eq!(status.state, ContainerState::ContainerRunning as i32);
    assert_eq!(
        node.boot_id(&id),
        boot_id,
        "not the same kernel after the restart"
    );
    node.remove(&pod);
    node.finish();
}

/// The host's cgroup directories named `name` (one per v1 hierarchy, or
/// the v2 one), as cgroupfs makes them for a cgroupsPath of that name.
fn host_cgroups(name: &str) -> Vec<std::path::PathBuf> {
    let mut dirs = vec![Path::new("/sys/fs/cgroup").join(name)];
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        dirs.push(hierarchy.path().join(name));
    }
    dirs.into_iter().filter(|d| d.is_dir()).collect()
}

/// Pods whose container ended on its own stop and go like any other, both
/// once CRI has seen the exit and straight after it (when CRI may still
/// kill what has finished, and must take the shim's "not found" for
/// "already gone"). Their cgroup parent is a systemd slice, for which CRI
/// writes cgroupsPath "slice:cri-containerd:id": without the systemd
/// driver, runc and kata-rs take that as a cgroupfs path.
#[test]
fn a_pod_whose_container_exited_on_its_own_stops_and_goes() {
    let node = node();
    for seen in [true, false] {
        let name = format!("exited-{}", if seen { "seen" } else { "at-once" });
        let mut config = node.pod_config(&name);
        config.linux.as_mut().unwrap().cgroup_parent = "kata-rs-test.slice".into();
        let pod = node
            .cri
            .run_pod(&config, node.handler)
            .unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e}"));
        let cgroup = |id: &str| format!("kata-rs-test.slice:cri-containerd:{id}");
        assert!(
            !host_cgroups(&cgroup(&pod)).is_empty(),
            "the pod's sandbox has no cgroup {}",
            cgroup(&pod)
        );
        let id = node.start(&pod, &config, "quitter", &["sh", "-c", "exit 3"]);
        if seen {
            assert_eq!(node.exited(&id).exit_code, 3);

            // A container over its memory limit: the OOM killer ends it,
            // and CRI says so (the reason a kubelet shows as OOMKilled).
            let mut hog = cri::container_config(
                "hog",
                IMAGE,
                &["dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1"],
            );
            hog.linux = Some(LinuxContainerConfig {
                resources: Some(LinuxContainerResources {
                    memory_limit_in_bytes: 32 << 20,
                    ..Default::default()
                }),
                ..Default::default()
            });
            let hog = node.start_config(&pod, &config, &hog);
            assert_oom_killed(&node.exited(&hog));
        }
        node.remove(&pod);
        for left in [&pod, &id] {
            assert_eq!(
                host_cgroups(&cgroup(left)),
                Vec::<std::path::PathBuf>::new()
            );
        }
    }
    node.finish();
}

/// A VM pod's shim, VMM and virtiofsd live in its sandbox's cgroup on the
/// host, under the pod cgroup the kubelet bounds (here made by the test as
/// the kubelet makes it), so that the pod's memory usage counts them and
/// its limit holds them; the guest is sized to fit under that limit.
#[test]
fn a_vm_pods_host_processes_live_in_its_cgroup_under_its_limit() {
    let node = node();
    if !node.vm() {
        println!("SKIP: in namespace isolation the pod's containers have their own host cgroups, as with runc");
        return;
    }
    let parent = format!("kata-rs-test-pod-{}", std::process::id());
    let parent_dir = cgroup::memory_root().join(&parent);
    // The pod's containers' limits plus a RuntimeClass overhead, as the
    // kubelet writes them.
    let pod_limit: u64 = 224 << 20;
    cgroup::make_with_memory_limit(&parent_dir, pod_limit);
    let mut config = node.pod_config("bounded");
    config.linux.as_mut().unwrap().cgroup_parent = format!("/{parent}");
    let pod = node
        .cri
        .run_pod(&config, node.handler)
        .unwrap_or_else(|e| panic!("RunPodSandbox bounded: {e}"));
    let id = node.start(&pod, &config, "sleeper", &["sleep", "1000"]);
    let sandbox_dir = parent_dir.join(&pod);
    let members = cgroup::members(&sandbox_dir);
    let has = |what: &str| members.iter().any(|(_, cmd)| cmd.contains(what));
    for what in ["containerd-shim-kata-rs-v2", "kata-rs-vmm", "virtiofsd"] {
        assert!(
            has(what),
            "no {what} in {}: {members:?}",
            sandbox_dir.display()
        );
    }
    // Everything they touched since they were born there is charged to
    // the pod: the guest's RAM among it.
    let born_there: u64 = members
        .iter()
        .filter(|(_, cmd)| !cmd.contains("containerd-shim"))
        .map(|(pid, _)| cgroup::rss_anon(*pid))
        .sum();
    let usage = cgroup::memory_usage(&parent_dir);
    assert!(
        usage >= born_there,
        "the pod's memory usage {usage} does not count its VMM and virtiofsd ({born_there})"
    );
    let meminfo = node.exec(&id, &["grep", "MemTotal", "/proc/meminfo"]).1;
    let kib: u64 = meminfo.split_whitespace().nth(1).unwrap().parse().unwrap();
    let overhead = kata_rs::config::Hypervisor::default().host_overhead_mib << 20;
    assert!(
        kib << 10 <= pod_limit - overhead,
        "the guest's {kib} kB of RAM do not leave the host's overhead under the pod's limit"
    );
    // A guest that touches nearly all of its RAM costs the host at most
    // its size: the host's OOM killer leaves the VMM alone.
    let most = format!("bs={}", (kib << 10) * 3 / 4);
    node.exec(
        &id,
        &["dd", "if=/dev/zero", "of=/dev/null", &most, "count=1"],
    );
    assert_eq!(
        cgroup::oom_kills(&parent_dir),
        0,
        "the host's OOM killer came"
    );
    assert_eq!(node.exec(&id, &["hostname"]).1.trim(), "bounded");
    // If the host's OOM killer ends the VMM all the same (here: the
    // sandbox's cgroup limited below what it uses, which on cgroup v2 has
    // it kill at once), the pod's containers are reported OOMKilled.
    assert!(cgroup::unified(), "the emulated KVM host runs cgroup v2");
    cgroup::limit_memory(&sandbox_dir, cgroup::memory_usage(&sandbox_dir) / 2);
    assert_oom_killed(&node.exited(&id));
    node.remove(&pod);
    assert!(!sandbox_dir.exists(), "{} is left", sandbox_dir.display());
    std::fs::remove_dir(&parent_dir).unwrap();
    node.finish();
}

#[test]
fn a_killed_vmm_or_host_agent_ends_the_pods_containers_and_leaves_nothing() {
    let node = node();
    if !node.kata_rs() {
        println!("SKIP: the runc handler has no VMM or host agent to kill");
        return;
    }
    let (pod, id) = node.sleeping_pod("backend-killed");
    kill_the_one(
        &pod_backend(&pod, node.vm()),
        "VMM or host agent for the pod",
    );
    node.exited(&id);
    assert_no_container_left(&[&id]);
    node.remove(&pod);
    node.finish();
}

#[test]
fn pods_started_and_removed_side_by_side_keep_apart() {
    let node = node();
    // Bounded: a pod's boot in the emulated KVM host takes a minute.
    let rounds = if node.vm() { 2 } else { 10 };
    for round in 0..rounds {
        let names = [format!("left-{round}"), format!("right-{round}")];
        // Two guests booting at the same moment in the emulated KVM host
        // stall in early boot far more often than one (see
        // tests/emulated-host/README.md), so there the pods start one after
        // the other; they run, and go, side by side.
        let pods: Vec<(String, String)> = if node.vm() {
            names.iter().map(|name| node.sleeping_pod(name)).collect()
        } else {
            side_by_side(&names, |name| node.sleeping_pod(name))
        };
        println!("round {round}: both pods run");
        for ((_, id), name) in pods.iter().zip(&names) {
            assert_eq!(
                node.exec(id, &["hostname"]).1.trim(),
                name,
                "a container saw another pod's hostname"
            );
        }
        if node.vm() {
            assert_ne!(
                node.boot_id(&pods[0].1),
                node.boot_id(&pods[1].1),
                "two pods shared a VM"
            );
        }
        println!("round {round}: removing both pods");
        side_by_side(&pods, |(pod, _)| node.remove(pod));
    }
    node.finish();
}

/// `f` applied to each of `items`, each in its own thread, all at once.
fn side_by_side<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    std::thread::scope(|scope| {
        let threads: Vec<_> = items
            .iter()
            .map(|item| {
                let f = &f;
                scope.spawn(move || f(item))
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    })
}
