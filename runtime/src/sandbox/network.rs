//! The pod's network on the host. CNI put interfaces (a veth, with
//! addresses and routes) into the pod's network namespace; each gets a tap
//! in that namespace, joined to it with tc (an ingress qdisc and a mirred
//! redirect each way, as Kata does by default), so the veth's frames reach
//! the VM and come back unchanged. The taps' descriptors go to the VMM, one
//! NIC each with the veth's MAC, and the agent gives those NICs the
//! interfaces' names, addresses, permanent neighbours and routes
//! ([`PodNetwork::request`]).
//!
//! Read and set up with iproute2's `ip` and `tc`, run inside the namespace:
//! every Kubernetes node has them, and tc has no other interface short of
//! netlink. The taps are not persistent: they go with the VMM.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use kata_rs_protocol::agent::{Interface, Neighbour, Route, SetupPodNetworkRequest};
use nix::sched::{setns, CloneFlags};
use serde_json::Value;

/// A pod interface, as the guest NIC joined to it gets it.
pub struct Nic {
    name: String,
    pub mac: String,
    pub mtu: u32,
    addresses: Vec<String>,
    /// Whether its ingress qdisc is kata-rs's, to go with the redirect;
    /// one a CNI plugin made (an ingress or clsact qdisc) stays.
    own_qdisc: bool,
}

#[derive(Default)]
pub struct PodNetwork {
    /// The namespace the interfaces are in.
    netns: Option<std::path::PathBuf>,
    pub nics: Vec<Nic>,
    /// The tap joined to each NIC's interface, in the same order, until
    /// the VMM holds them.
    pub taps: Vec<Arc<OwnedFd>>,
    routes: Vec<Route>,
    neighbours: Vec<Neighbour>,
}

impl PodNetwork {
    /// Each joined interface's name, and whether its qdisc is ours.
    fn joined(&self) -> Vec<(String, bool)> {
        self.nics
            .iter()
            .map(|n| (n.name.clone(), n.own_qdisc))
            .collect()
    }

    /// What the agent needs to give the guest the same network.
    pub fn request(&self) -> SetupPodNetworkRequest {
        let mut req = SetupPodNetworkRequest::new();
        req.interfaces = self
            .nics
            .iter()
            .map(|n| {
                let mut i = Interface::new();
                i.name = n.name.clone();
                i.mac = n.mac.clone();
                i.mtu = n.mtu;
                i.addresses = n.addresses.clone();
                i
            })
            .collect();
        req.routes = self.routes.clone();
        req.neighbours = self.neighbours.clone();
        req
    }
}

/// The network namespace CRI made for the pod: the path its sandbox
/// container's spec names, if any.
pub fn pod_netns(spec: &Value) -> Option<String> {
    spec["linux"]["namespaces"]
        .as_array()?
        .iter()
        .find(|ns| ns["type"] == "network")?["path"]
        .as_str()
        .map(str::to_owned)
}

/// The MTUs a virtio-net device may tell the guest (virtio 1.2, 5.1.4.1);
/// no working link has another.
const MTUS: std::ops::RangeInclusive<u32> = 68..=65535;

/// Runs `f` on a thread of its own inside network namespace `ns`: setns
/// moves the calling thread only, and what it spawns starts in the
/// thread's namespace.
fn in_netns<T: Send + 'static>(
    ns: File,
    name: String,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    std::thread::spawn(move || {
        setns(&ns, CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("enter the network namespace {name}"))?;
        f()
    })
    .join()
    .map_err(|_| anyhow!("the pod network thread panicked"))?
}

/// Joins a tap to each interface of network namespace `netns`. What it
/// joined is undone if it fails.
pub fn connect(netns: &Path) -> Result<PodNetwork> {
    let ns = File::open(netns).with_context(|| format!("open {}", netns.display()))?;
    refuse_own_namespace(&ns, netns)?;
    in_netns(ns, netns.display().to_string(), || {
        let mut network = PodNetwork::default();
        match join_all(&mut network) {
            Ok(()) => Ok(network),
            Err(e) => {
                unjoin(&network.joined());
                Err(e)
            }
        }
    })
    .map(|mut network| {
        network.netns = Some(netns.to_owned());
        network
    })
}

/// Takes the redirects off the pod's interfaces, if their namespace is
/// still there (the taps themselves go when their last descriptor closes).
pub fn disconnect(network: &PodNetwork) {
    let Some(netns) = &network.netns else {
        return;
    };
    if !netns.exists() {
        return;
    }
    let joined = network.joined();
    let done = File::open(netns)
        .map_err(anyhow::Error::from)
        .and_then(|ns| {
            in_netns(ns, netns.display().to_string(), move || {
                unjoin(&joined);
                Ok(())
            })
        });
    if let Err(e) = done {
        tracing::warn!(netns = %netns.display(), error = %e, "take the redirects off the pod's interfaces");
    }
}

/// A pod's namespace that is the shim's own would hand the host's own
/// interfaces to the VM.
fn refuse_own_namespace(ns: &File, path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let theirs = ns.metadata()?;
    let ours = std::fs::metadata("/proc/self/ns/net")?;
    if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
        bail!(
            "{} is the host's own network namespace: a VM takes only a pod's",
            path.display()
        );
    }
    Ok(())
}

/// In the pod's namespace: a tap joined to each interface, then the routes
/// and permanent neighbours.
fn join_all(network: &mut PodNetwork) -> Result<()> {
    let links = json_of("ip", &["-j", "addr", "show"])?;
    for link in links.as_array().into_iter().flatten() {
        let Some((name, mac, mtu, addresses)) = pod_interface(link) else {
            continue;
        };
        let mtu = mtu.clamp(*MTUS.start(), *MTUS.end());
        let tap_name = format!("tap{}_kr", network.nics.len());
        let tap = open_tap(&tap_name)?;
        let own_qdisc = !has_ingress_hook(&name)?;
        // Recorded before the redirects, so a failure undoes them too.
        network.nics.push(Nic {
            name: name.clone(),
            mac: mac.clone(),
            mtu,
            addresses,
            own_qdisc,
        });
        network.taps.push(Arc::new(tap));
        run(Command::new("ip").args(["link", "set", &tap_name, "mtu", &mtu.to_string(), "up"]))?;
        redirect(&name, &tap_name, own_qdisc)?;
        // The tap is new: its qdisc is ours, and goes with it.
        redirect(&tap_name, &name, true)?;
        tracing::info!(interface = %name, tap = %tap_name, %mac, "pod interface joined to a tap");
    }
    let names: Vec<&str> = network.nics.iter().map(|n| n.name.as_str()).collect();
    let mut routes = Vec::new();
    for (family, ipv6) in [("-4", false), ("-6", true)] {
        let listed = json_of("ip", &["-j", family, "route", "show"])?;
        routes.extend(
            listed
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| pod_route(r, ipv6, &names)),
        );
    }
    network.routes = with_onlink_gateways(routes);
    let ipv6_neighbours = json_of("ip", &["-j", "-6", "neigh", "show", "nud", "permanent"])?;
    let left_out: Vec<&str> = ipv6_neighbours
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["dev"].as_str().is_some_and(|d| names.contains(&d)))
        .filter_map(|n| n["dst"].as_str())
        .collect();
    if !left_out.is_empty() {
        tracing::warn!(
            ?left_out,
            "permanent IPv6 neighbours are not given to the guest (it finds them by NDP)"
        );
    }
    let neighbours = json_of("ip", &["-j", "-4", "neigh", "show", "nud", "permanent"])?;
    network.neighbours = neighbours
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| pod_neighbour(n, &names))
        .collect();
    Ok(())
}

/// In the pod's namespace: the redirects off the interfaces `joined` (as
/// [`PodNetwork::joined`] lists them), with the qdiscs that are ours.
fn unjoin(joined: &[(String, bool)]) {
    for (name, own_qdisc) in joined {
        let _ = if *own_qdisc {
            run(Command::new("tc").args(["qdisc", "del", "dev", name, "ingress"]))
        } else {
            run(Command::new("tc").args([
                "filter",
                "del",
                "dev",
                name,
                "ingress",
                "pref",
                FILTER_PREF,
            ]))
        };
    }
}

/// An interface of the pod worth a NIC: an Ethernet link with an IPv4 or
/// a global IPv6 address (the guest makes its link-local ones itself). Its
/// name, MAC, MTU and addresses ("a.b.c.d/len", "a:b::c/len").
fn pod_interface(link: &Value) -> Option<(String, String, u32, Vec<String>)> {
    if link["link_type"] != "ether" {
        return None;
    }
    let addresses: Vec<String> = link["addr_info"]
        .as_array()?
        .iter()
        .filter(|a| a["family"] == "inet" || a["family"] == "inet6" && a["scope"] == "global")
        .filter_map(|a| {
            Some(format!(
                "{}/{}",
                a["local"].as_str()?,
                a["prefixlen"].as_u64()?
            ))
        })
        .collect();
    if addresses.is_empty() {
        return None;
    }
    Some((
        link["ifname"].as_str()?.to_owned(),
        link["address"].as_str()?.to_owned(),
        u32::try_from(link["mtu"].as_u64()?).ok()?,
        addresses,
    ))
}

/// A route the guest must be given: on one of the pod's interfaces, and
/// not one its kernel makes itself for an address's own subnet. With it,
/// for an `onlink` route, whose gateway lies outside the link's subnets
/// (which SIOCADDRT cannot say), a host route to the gateway on the link.
fn pod_route(route: &Value, ipv6: bool, interfaces: &[&str]) -> Option<(Route, Option<Route>)> {
    let device = route["dev"].as_str()?;
    if !interfaces.contains(&device) || route["protocol"] == "kernel" {
        return None;
    }
    let host = |a: IpAddr| match a {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    };
    let destination = match route["dst"].as_str()? {
        "default" if ipv6 => "::/0".to_owned(),
        "default" => "0.0.0.0/0".to_owned(),
        d if d.contains('/') => d.to_owned(),
        d => host(d.parse().ok()?),
    };
    let route_to = |destination: String, gateway: &str, metric: u32| {
        let mut r = Route::new();
        r.destination = destination;
        r.gateway = gateway.to_owned();
        r.device = device.to_owned();
        r.metric = metric;
        r
    };
    let gateway = route["gateway"].as_str().unwrap_or_default();
    let metric = route["metric"]
        .as_u64()
        .and_then(|m| u32::try_from(m).ok())
        .unwrap_or_default();
    let onlink = route["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f == "onlink"));
    let to_gateway = gateway
        .parse()
        .ok()
        .filter(|_| onlink)
        .map(|gw| route_to(host(gw), "", 0));
    Some((route_to(destination, gateway, metric), to_gateway))
}

/// The pod's routes, each onlink gateway's host route (which the agent adds
/// before the routes through it) included once, unless the pod has a route
/// on the link to that gateway already, whatever its metric.
fn with_onlink_gateways(routes: Vec<(Route, Option<Route>)>) -> Vec<Route> {
    let mut all: Vec<Route> = routes.iter().map(|(r, _)| r.clone()).collect();
    for to_gateway in routes.into_iter().filter_map(|(_, g)| g) {
        let known = all.iter().any(|r| {
            r.gateway.is_empty()
                && r.destination == to_gateway.destination
                && r.device == to_gateway.device
        });
        if !known {
            all.push(to_gateway);
        }
    }
    all
}

/// A permanent neighbour on one of the pod's interfaces (`ip -j neigh`
/// lists only those asked for).
fn pod_neighbour(neighbour: &Value, interfaces: &[&str]) -> Option<Neighbour> {
    let device = neighbour["dev"].as_str()?;
    if !interfaces.contains(&device) {
        return None;
    }
    let mut n = Neighbour::new();
    n.ip = neighbour["dst"]
        .as_str()?
        .parse::<Ipv4Addr>()
        .ok()?
        .to_string();
    n.mac = neighbour["lladdr"].as_str()?.to_owned();
    n.device = device.to_owned();
    Some(n)
}

/// The preference of the redirect filters kata-rs adds, so that they come
/// off again without touching a CNI plugin's own filters.
const FILTER_PREF: &str = "19282";

/// Whether interface `name` has an ingress hook already: an ingress or a
/// clsact qdisc (as eBPF-based CNI plugins attach), which must not be
/// replaced.
fn has_ingress_hook(name: &str) -> Result<bool> {
    let qdiscs = json_of("tc", &["-j", "qdisc", "show", "dev", name])?;
    Ok(qdiscs
        .as_array()
        .into_iter()
        .flatten()
        .any(|q| q["kind"] == "ingress" || q["kind"] == "clsact"))
}

/// Everything arriving on `from` leaves through `to`; `add_qdisc` when
/// `from` has no ingress hook yet.
fn redirect(from: &str, to: &str, add_qdisc: bool) -> Result<()> {
    if add_qdisc {
        run(Command::new("tc").args(["qdisc", "add", "dev", from, "ingress"]))?;
    }
    run(Command::new("tc").args([
        "filter",
        "add",
        "dev",
        from,
        "ingress",
        "pref",
        FILTER_PREF,
        "protocol",
        "all",
        "u32",
        "match",
        "u8",
        "0",
        "0",
        "action",
        "mirred",
        "egress",
        "redirect",
        "dev",
        to,
    ]))
}

/// A new tap named `name` in the calling thread's namespace.
fn open_tap(name: &str) -> Result<OwnedFd> {
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .context("open /dev/net/tun")?;
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads the ifreq passed, alive across the call.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &req) } < 0 {
        return Err(std::io::Error::last_os_error()).context(format!("create the tap {name}"));
    }
    Ok(OwnedFd::from(tun))
}

/// What `program` (ip or tc, with -j) prints, as JSON.
fn json_of(program: &str, args: &[&str]) -> Result<Value> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("run {program} (iproute2)"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{program} {}: not JSON", args.join(" ")))
}

fn run(cmd: &mut Command) -> Result<()> {
    let what = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().with_context(|| format!("run {what}"))?;
    if !out.status.success() {
        bail!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_ethernet_links_with_addresses_become_nics() {
        let veth = json!({"ifname": "eth0", "link_type": "ether", "mtu": 1450,
            "address": "5a:0b:0c:0d:0e:0f",
            "addr_info": [{"family": "inet", "local": "10.213.0.2", "prefixlen": 30},
                          {"family": "inet6", "local": "fd00::2", "prefixlen": 126, "scope": "global"},
                          {"family": "inet6", "local": "fe80::1", "prefixlen": 64, "scope": "link"}]});
        assert_eq!(
            pod_interface(&veth),
            Some((
                "eth0".into(),
                "5a:0b:0c:0d:0e:0f".into(),
                1450,
                vec!["10.213.0.2/30".into(), "fd00::2/126".into()]
            ))
        );
        let link_local_only = json!({"ifname": "eth2", "link_type": "ether", "mtu": 1500,
            "address": "5a:00:00:00:00:02",
            "addr_info": [{"family": "inet6", "local": "fe80::2", "prefixlen": 64, "scope": "link"}]});
        assert_eq!(pod_interface(&link_local_only), None);
        let lo = json!({"ifname": "lo", "link_type": "loopback", "mtu": 65536, "address": "00:00:00:00:00:00",
            "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}]});
        assert_eq!(pod_interface(&lo), None);
        let bare = json!({"ifname": "eth1", "link_type": "ether", "mtu": 1500, "address": "5a:00:00:00:00:01",
            "addr_info": []});
        assert_eq!(pod_interface(&bare), None);
    }

    #[test]
    fn routes_the_guest_kernel_does_not_make_itself() {
        let routes = json!([
            {"dst": "default", "gateway": "10.213.0.1", "dev": "eth0"},
            {"dst": "10.213.0.0/30", "dev": "eth0", "protocol": "kernel", "scope": "link"},
            {"dst": "10.96.0.0/12", "gateway": "10.213.0.1", "dev": "eth0", "metric": 100},
            {"dst": "169.254.1.1", "dev": "eth0", "scope": "link"},
            {"dst": "192.168.0.0/16", "dev": "other0"},
            {"dst": "172.20.0.0/16", "gateway": "172.31.0.1", "dev": "eth0", "flags": ["onlink"]},
            {"dst": "172.21.0.0/16", "gateway": "172.31.0.1", "dev": "eth0", "flags": ["onlink"]}
        ]);
        let ipv6_routes = json!([
            {"dst": "fd00::/126", "dev": "eth0", "protocol": "kernel", "metric": 256},
            {"dst": "fe80::/64", "dev": "eth0", "protocol": "kernel", "metric": 256},
            {"dst": "fd00:99::7", "dev": "eth0", "metric": 1024},
            {"dst": "default", "gateway": "fe80::1", "dev": "eth0", "metric": 1024},
            {"dst": "fd00:77::/64", "gateway": "fd00:99::7", "dev": "eth0", "flags": ["onlink"]}
        ]);
        let routes_of = |routes: &Value, ipv6| {
            routes
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|r| pod_route(r, ipv6, &["eth0"]))
                .collect::<Vec<_>>()
        };
        let mut listed = routes_of(&routes, false);
        listed.extend(routes_of(&ipv6_routes, true));
        let got: Vec<(String, String, u32)> = with_onlink_gateways(listed)
            .into_iter()
            .map(|r| (r.destination, r.gateway, r.metric))
            .collect();
        // Each onlink gateway's host route once, after the routes, and
        // none where the pod routes to the gateway on the link itself.
        let want = [
            ("0.0.0.0/0", "10.213.0.1", 0),
            ("10.96.0.0/12", "10.213.0.1", 100),
            ("169.254.1.1/32", "", 0),
            ("172.20.0.0/16", "172.31.0.1", 0),
            ("172.21.0.0/16", "172.31.0.1", 0),
            ("fd00:99::7/128", "", 1024),
            ("::/0", "fe80::1", 1024),
            ("fd00:77::/64", "fd00:99::7", 0),
            ("172.31.0.1/32", "", 0),
        ];
        assert_eq!(got, want.map(|(a, b, c)| (a.to_owned(), b.to_owned(), c)));
    }

    /// What `program` (ip or tc) prints for `args` in namespace `netns`.
    fn iproute2_in(program: &str, netns: &str, args: &str) -> String {
        let out = Command::new(program)
            .args(["-n", netns])
            .args(args.split_whitespace())
            .output()
            .unwrap();
        assert!(out.status.success(), "{program} -n {netns} {args}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn ip_in(netns: &str, args: &str) -> String {
        iproute2_in("ip", netns, args)
    }

    fn tc_in(netns: &str, args: &str) -> String {
        iproute2_in("tc", netns, args)
    }

    /// A network namespace set up as a CNI plugin would: a veth with an
    /// address, a default route and its gateway's MAC. Removed when
    /// dropped.
    struct CniNetns(String);

    impl CniNetns {
        fn new() -> Self {
            static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let name = format!("krs-shim-test-{}-{n}", std::process::id());
            run(Command::new("ip").args(["netns", "add", &name])).unwrap();
            let ns = Self(name);
            ip_in(
                &ns.0,
                "link add eth0 address 5a:00:00:00:00:07 type veth peer name host0",
            );
            ip_in(&ns.0, "addr add 10.77.0.2/24 dev eth0");
            ip_in(&ns.0, "link set eth0 up");
            ip_in(&ns.0, "link set host0 up");
            ip_in(&ns.0, "route add default via 10.77.0.1");
            ip_in(
                &ns.0,
                "neigh add 10.77.0.1 lladdr 5a:00:00:00:00:01 dev eth0 nud permanent",
            );
            ns
        }
    }

    impl Drop for CniNetns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    #[test]
    fn each_cni_interface_gets_a_tap_joined_to_it_until_the_tap_closes() {
        let ns = CniNetns::new();
        let network = connect(&Path::new("/var/run/netns").join(&ns.0)).unwrap();
        assert_eq!((network.nics.len(), network.taps.len()), (1, 1));
        let req = network.request();
        let i = &req.interfaces[0];
        assert_eq!(
            (i.name.as_str(), i.mac.as_str(), i.addresses.clone()),
            ("eth0", "5a:00:00:00:00:07", vec!["10.77.0.2/24".to_owned()])
        );
        let routes: Vec<_> = req
            .routes
            .iter()
            .map(|r| {
                (
                    r.destination.as_str(),
                    r.gateway.as_str(),
                    r.device.as_str(),
                )
            })
            .collect();
        assert_eq!(routes, [("0.0.0.0/0", "10.77.0.1", "eth0")]);
        let n = &req.neighbours[..];
        assert_eq!(
            n.iter()
                .map(|n| (n.ip.as_str(), n.mac.as_str(), n.device.as_str()))
                .collect::<Vec<_>>(),
            [("10.77.0.1", "5a:00:00:00:00:01", "eth0")]
        );
        assert!(ip_in(&ns.0, "-o link show tap0_kr").contains(",UP"));
        for (from, to) in [("eth0", "tap0_kr"), ("tap0_kr", "eth0")] {
            let out = Command::new("tc")
                .args([
                    "-n", &ns.0, "filter", "show", "dev", from, "parent", "ffff:",
                ])
                .output()
                .unwrap();
            let filters = String::from_utf8_lossy(&out.stdout);
            assert!(
                filters.contains(&format!("Egress Redirect to device {to}")),
                "{from}: {filters}"
            );
        }
        disconnect(&network);
        let out = Command::new("tc")
            .args(["-n", &ns.0, "qdisc", "show", "dev", "eth0"])
            .output()
            .unwrap();
        assert!(!String::from_utf8_lossy(&out.stdout).contains("ingress"));
        drop(network);
        assert!(!ip_in(&ns.0, "-o link show").contains("tap0_kr"));
    }

    #[test]
    fn a_cni_plugins_clsact_qdisc_and_its_filters_stay() {
        let ns = CniNetns::new();
        tc_in(&ns.0, "qdisc add dev eth0 clsact");
        tc_in(
            &ns.0,
            "filter add dev eth0 ingress pref 1 protocol all u32 match u8 0 0 flowid 1:1",
        );
        let network = connect(&Path::new("/var/run/netns").join(&ns.0)).unwrap();
        let filters = tc_in(&ns.0, "filter show dev eth0 ingress");
        assert!(filters.contains("pref 1 u32"), "{filters}");
        assert!(
            filters.contains("Egress Redirect to device tap0_kr"),
            "{filters}"
        );
        disconnect(&network);
        assert!(tc_in(&ns.0, "qdisc show dev eth0").contains("clsact"));
        let filters = tc_in(&ns.0, "filter show dev eth0 ingress");
        assert!(filters.contains("pref 1 u32"), "{filters}");
        assert!(!filters.contains("Redirect"), "{filters}");
    }

    #[test]
    fn the_hosts_own_namespace_is_refused() {
        let err = connect(Path::new("/proc/self/ns/net")).err().unwrap();
        assert!(
            format!("{err:#}").contains("is the host's own network namespace"),
            "{err:#}"
        );
    }

    #[test]
    fn a_missing_namespace_is_named() {
        let err = connect(Path::new("/var/run/netns/no-such-ns"))
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("open /var/run/netns/no-such-ns"),
            "{err:#}"
        );
    }

    #[test]
    fn the_pod_netns_comes_from_the_network_namespace_path() {
        let spec = json!({"linux": {"namespaces": [{"type": "pid"},
            {"type": "network", "path": "/var/run/netns/cni-1"}]}});
        assert_eq!(pod_netns(&spec).as_deref(), Some("/var/run/netns/cni-1"));
        assert_eq!(
            pod_netns(&json!({"linux": {"namespaces": [{"type": "network"}]}})),
            None
        );
    }
}
