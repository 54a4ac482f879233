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
//!
//! - [`discovery`]: what of the namespace the guest is given;
//! - [`tc`]: the redirects between an interface and its tap;
//! - [`tap`]: the taps;
//! - [`netns`]: entering the namespace;
//! - [`iproute2`]: running `ip` and `tc`;
//! - [`error`]: how it fails.

mod discovery;
mod error;
mod iproute2;
mod netns;
mod tap;
mod tc;

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use kata_rs_protocol::agent::{Interface, Neighbour, Route, SetupPodNetworkRequest};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

pub use error::NetworkError;

use discovery::{pod_interface, pod_neighbour, pod_route, with_onlink_gateways};
use error::Result;
use iproute2::{json_of, run};
use netns::{in_netns, refuse_own_namespace};
use tap::open_tap;
use tc::{has_ingress_hook, redirect};

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
pub fn pod_netns(spec: &Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|ns| ns.typ() == LinuxNamespaceType::Network)?
        .path()
        .clone()
}

/// The MTUs a virtio-net device may tell the guest (virtio 1.2, 5.1.4.1);
/// no working link has another.
const MTUS: std::ops::RangeInclusive<u32> = 68..=65535;

/// Joins a tap to each interface of network namespace `netns`. What it
/// joined is undone if it fails.
pub fn connect(netns: &Path) -> Result<PodNetwork> {
    let ns = open(netns)?;
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
    let done = open(netns).and_then(|ns| {
        in_netns(ns, netns.display().to_string(), move || {
            unjoin(&joined);
            Ok(())
        })
    });
    if let Err(e) = done {
        tracing::warn!(netns = %netns.display(), error = %e, "take the redirects off the pod's interfaces");
    }
}

fn open(netns: &Path) -> Result<File> {
    File::open(netns).map_err(|cause| NetworkError::Open {
        path: netns.to_owned(),
        cause,
    })
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
        if let Err(e) = tc::unredirect(name, *own_qdisc) {
            tracing::debug!(interface = %name, error = %e, "take the redirect off");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::spec_of;
    use serde_json::json;

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
        let spec = spec_of(json!({"linux": {"namespaces": [{"type": "pid"},
            {"type": "network", "path": "/var/run/netns/cni-1"}]}}));
        assert_eq!(
            pod_netns(&spec).as_deref(),
            Some(Path::new("/var/run/netns/cni-1"))
        );
        assert_eq!(
            pod_netns(&spec_of(
                json!({"linux": {"namespaces": [{"type": "network"}]}})
            )),
            None
        );
    }
}
