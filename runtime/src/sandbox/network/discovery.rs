//! What of a pod's network namespace the guest is given, read from
//! iproute2's JSON: its interfaces, routes and permanent neighbours.

use std::net::{IpAddr, Ipv4Addr};

use kata_rs_protocol::agent::{Neighbour, Route};
use serde_json::Value;

/// An interface of the pod worth a NIC: an Ethernet link with an IPv4 or
/// a global IPv6 address (the guest makes its link-local ones itself). Its
/// name, MAC, MTU and addresses ("a.b.c.d/len", "a:b::c/len").
pub fn pod_interface(link: &Value) -> Option<(String, String, u32, Vec<String>)> {
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
pub fn pod_route(route: &Value, ipv6: bool, interfaces: &[&str]) -> Option<(Route, Option<Route>)> {
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
pub fn with_onlink_gateways(routes: Vec<(Route, Option<Route>)>) -> Vec<Route> {
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
pub fn pod_neighbour(neighbour: &Value, interfaces: &[&str]) -> Option<Neighbour> {
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
}
