//! The pod's network inside the guest: the guest's own network namespace,
//! which the runtime gives every container of a pod. Set up with interface
//! ioctls: IPv4 and IPv6 addresses and routes, and IPv4 neighbours, need
//! nothing more, and the guest has no netlink library to carry.

use std::ffi::CString;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use kata_rs_protocol::agent::{Interface, Neighbour, Route, SetupPodNetworkRequest};

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

type Result<T> = std::result::Result<T, NetworkError>;

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Io { what, source }
}

/// Brings the loopback up (as CNI's loopback plugin does on a host), then
/// each interface, its permanent neighbours and the routes.
pub fn setup_pod_network(req: &SetupPodNetworkRequest) -> Result<()> {
    validate(req)?;
    link_set_up("lo", true).map_err(io_err("bring lo up"))?;
    // Every NIC to be renamed first gets a name of its own, so that two
    // NICs trading names never meet one taken.
    let mut current = Vec::new();
    for (i, iface) in req.interfaces.iter().enumerate() {
        let nic = nic_with_mac(parse_mac(&iface.mac)?)?;
        if nic == iface.name {
            current.push(nic);
            continue;
        }
        let interim = format!("krs-nic{i}");
        // A NIC is renamed only while it is down.
        link_set_up(&nic, false).map_err(io_err(format!("take {nic} down")))?;
        rename(&nic, &interim).map_err(io_err(format!("rename {nic} to {interim}")))?;
        current.push(interim);
    }
    for (iface, nic) in req.interfaces.iter().zip(&current) {
        set_up_interface(iface, nic)?;
    }
    for neighbour in &req.neighbours {
        add_neighbour(neighbour)?;
    }
    // Routes on the link first: a gateway must be reachable before a route
    // through it goes in (Calico's default route is via a link-local
    // address with a route of its own).
    let (on_link, via): (Vec<&Route>, Vec<&Route>) =
        req.routes.iter().partition(|r| r.gateway.is_empty());
    for route in on_link.into_iter().chain(via) {
        add_route(route)?;
    }
    Ok(())
}

/// Checks the whole request before anything changes.
fn validate(req: &SetupPodNetworkRequest) -> Result<()> {
    for iface in &req.interfaces {
        check_name(&iface.name)?;
        parse_mac(&iface.mac)?;
        let mut ipv4 = 0usize;
        for address in &iface.addresses {
            if !parse_cidr(address)?.0.is_ipv4() {
                continue;
            }
            // Secondary IPv4 addresses go on aliases, NAME:N, which must
            // fit an interface name too.
            let label = format!("{}:{ipv4}", iface.name);
            if ipv4 > 0 && label.len() >= libc::IFNAMSIZ {
                return Err(NetworkError::Invalid(format!(
                    "{} cannot take a second IPv4 address ({address}): \
                     its alias {label} is longer than 15 bytes",
                    iface.name
                )));
            }
            ipv4 += 1;
        }
    }
    for route in &req.routes {
        let (dest, _) = parse_cidr(&route.destination)?;
        parse_gateway(&route.gateway, dest)?;
        check_name(&route.device)?;
    }
    for neighbour in &req.neighbours {
        parse_ip("neighbour", &neighbour.ip)?;
        parse_mac(&neighbour.mac)?;
        check_name(&neighbour.device)?;
    }
    Ok(())
}

/// Gives NIC `current` (down, if it is to be renamed) the interface's name,
/// MTU and addresses, and brings it up.
fn set_up_interface(iface: &Interface, current: &str) -> Result<()> {
    let addresses = iface
        .addresses
        .iter()
        .map(|a| parse_cidr(a))
        .collect::<Result<Vec<_>>>()?;
    let name = &iface.name;
    if current != name {
        rename(current, name).map_err(io_err(format!("rename {current} to {name}")))?;
    }
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for (addr, prefix) in addresses {
        match addr {
            IpAddr::V4(a) => v4.push((a, prefix)),
            IpAddr::V6(a) => v6.push((a, prefix)),
        }
    }
    if iface.mtu != 0 {
        let mut req = ifreq(name)?;
        req.ifr_ifru.ifru_mtu = i32::try_from(iface.mtu)
            .map_err(|_| NetworkError::Invalid(format!("MTU {} is out of range", iface.mtu)))?;
        ioctl(libc::SIOCSIFMTU, &mut req).map_err(io_err(format!("set {name}'s MTU")))?;
    }
    // The first address is the interface's own; the others are aliases,
    // which is how interface ioctls add secondary addresses.
    for (i, (addr, prefix)) in v4.into_iter().enumerate() {
        let label = if i == 0 {
            name.clone()
        } else {
            format!("{name}:{i}")
        };
        check_name(&label)?;
        let what = || format!("give {name} the address {addr}/{prefix}");
        let mut req = ifreq(&label)?;
        req.ifr_ifru.ifru_addr = sockaddr(addr);
        ioctl(libc::SIOCSIFADDR, &mut req).map_err(io_err(what()))?;
        req.ifr_ifru.ifru_netmask = sockaddr(mask(prefix));
        ioctl(libc::SIOCSIFNETMASK, &mut req).map_err(io_err(what()))?;
    }
    if !v6.is_empty() {
        // CNI claimed these addresses on the pod's side already; waiting
        // out duplicate address detection would only keep them unusable
        // (tentative) for the pod's first second. And the pod's routes come
        // from the host as they are: a router advertisement taken here
        // would add a default route that the pod's own then collides with.
        for (knob, value) in [("accept_dad", "0"), ("accept_ra", "0")] {
            let path = format!("/proc/sys/net/ipv6/conf/{name}/{knob}");
            std::fs::write(&path, value).map_err(io_err(format!("write {path}")))?;
        }
    }
    for (addr, prefix) in v6 {
        add_ipv6_address(name, addr, prefix)?;
    }
    link_set_up(name, true).map_err(io_err(format!("bring {name} up")))
}

fn add_ipv6_address(name: &str, addr: Ipv6Addr, prefix: u8) -> Result<()> {
    let what = || format!("give {name} the address {addr}/{prefix}");
    let req = libc::in6_ifreq {
        ifr6_addr: in6_addr(addr),
        ifr6_prefixlen: u32::from(prefix),
        ifr6_ifindex: if_index(name).map_err(io_err(what()))?,
    };
    let sock = socket(libc::AF_INET6)?;
    // SAFETY: SIOCSIFADDR on an AF_INET6 socket reads one in6_ifreq, which
    // lives across the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFADDR, &req) } < 0 {
        return Err(io_err(what())(io::Error::last_os_error()));
    }
    Ok(())
}

/// The kernel's struct in6_rtmsg (linux/ipv6_route.h), which libc does not
/// let be built.
#[repr(C)]
struct In6Rtmsg {
    dst: libc::in6_addr,
    src: libc::in6_addr,
    gateway: libc::in6_addr,
    kind: u32,
    dst_len: u16,
    src_len: u16,
    metric: u32,
    info: libc::c_ulong,
    flags: u32,
    ifindex: libc::c_int,
}

fn add_route(route: &Route) -> Result<()> {
    let (dest, prefix) = parse_cidr(&route.destination)?;
    let gateway = parse_gateway(&route.gateway, dest)?;
    check_name(&route.device)?;
    let done = match (dest, gateway) {
        (IpAddr::V4(dest), Some(IpAddr::V4(gw))) => add_ipv4_route(dest, prefix, Some(gw), route),
        (IpAddr::V4(dest), _) => add_ipv4_route(dest, prefix, None, route),
        (IpAddr::V6(dest), Some(IpAddr::V6(gw))) => add_ipv6_route(dest, prefix, Some(gw), route),
        (IpAddr::V6(dest), _) => add_ipv6_route(dest, prefix, None, route),
    };
    done.map_err(|e| {
        let via = gateway.map(|g| format!(" via {g}")).unwrap_or_default();
        io_err(format!(
            "add the route to {dest}/{prefix}{via} on {}",
            route.device
        ))(e)
    })
}

fn add_ipv4_route(
    dest: Ipv4Addr,
    prefix: u8,
    gateway: Option<Ipv4Addr>,
    route: &Route,
) -> io::Result<()> {
    let device = CString::new(route.device.as_str())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the device is not a name"))?;
    let metric = ipv4_metric(route);
    // SAFETY: rtentry is plain data; all zeroes is a valid value.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_metric = metric;
    rt.rt_dst = sockaddr(dest);
    rt.rt_genmask = sockaddr(mask(prefix));
    rt.rt_flags = libc::RTF_UP;
    if let Some(gw) = gateway {
        rt.rt_gateway = sockaddr(gw);
        rt.rt_flags |= libc::RTF_GATEWAY;
    }
    if prefix == 32 {
        rt.rt_flags |= libc::RTF_HOST;
    }
    // The kernel only reads the name during the call.
    rt.rt_dev = device.as_ptr().cast_mut();
    let sock = socket(libc::AF_INET).map_err(|e| io::Error::other(e.to_string()))?;
    // SAFETY: SIOCADDRT reads the rtentry passed and the name it points to,
    // both alive across the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT, &rt) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An IPv4 route's metric as SIOCADDRT takes it: one more than the
/// route's, in a short; 0 for the default. A larger one (Linux allows 32
/// bits) is the largest a short holds, which keeps it behind the others.
fn ipv4_metric(route: &Route) -> libc::c_short {
    libc::c_short::try_from(route.metric.saturating_add(1)).unwrap_or_else(|_| {
        tracing::warn!(
            destination = %route.destination,
            metric = route.metric,
            "an IPv4 route's metric above 32766 is given as 32766"
        );
        libc::c_short::MAX
    })
}

fn add_ipv6_route(
    dest: Ipv6Addr,
    prefix: u8,
    gateway: Option<Ipv6Addr>,
    route: &Route,
) -> io::Result<()> {
    // No RTF_HOST: IPv6 reads that bit as RTNH_F_ONLINK, and a /128 says
    // as much already.
    let mut flags = libc::RTF_UP as u32;
    if gateway.is_some() {
        flags |= libc::RTF_GATEWAY as u32;
    }
    let rt = In6Rtmsg {
        dst: in6_addr(dest),
        src: in6_addr(Ipv6Addr::UNSPECIFIED),
        gateway: in6_addr(gateway.unwrap_or(Ipv6Addr::UNSPECIFIED)),
        kind: u32::from(libc::RTN_UNICAST),
        dst_len: u16::from(prefix),
        src_len: 0,
        metric: route.metric,
        info: 0,
        flags,
        ifindex: if_index(&route.device)?,
    };
    let sock = socket(libc::AF_INET6).map_err(|e| io::Error::other(e.to_string()))?;
    // SAFETY: SIOCADDRT on an AF_INET6 socket reads one in6_rtmsg, which
    // lives across the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT, &rt) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A permanent ARP entry: the guest never asks who has that address.
fn add_neighbour(neighbour: &Neighbour) -> Result<()> {
    let ip = parse_ip("neighbour", &neighbour.ip)?;
    let mac = parse_mac(&neighbour.mac)?;
    let device = &neighbour.device;
    // SAFETY: arpreq is plain data; all zeroes is a valid value.
    let mut req: libc::arpreq = unsafe { std::mem::zeroed() };
    req.arp_pa = sockaddr(ip);
    req.arp_ha.sa_family = libc::ARPHRD_ETHER;
    for (dst, src) in req.arp_ha.sa_data.iter_mut().zip(mac) {
        *dst = src as libc::c_char;
    }
    req.arp_flags = libc::ATF_COM | libc::ATF_PERM;
    for (dst, src) in req.arp_dev.iter_mut().zip(ifreq(device)?.ifr_name) {
        *dst = src;
    }
    let sock = socket(libc::AF_INET)?;
    // SAFETY: SIOCSARP reads the arpreq passed, alive across the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSARP, &req) } < 0 {
        return Err(io_err(format!(
            "add the neighbour {ip} at {} on {device}",
            neighbour.mac
        ))(io::Error::last_os_error()));
    }
    Ok(())
}

/// The guest NIC whose MAC is `mac`.
fn nic_with_mac(mac: [u8; 6]) -> Result<String> {
    // SAFETY: if_nameindex returns a list ending in a zeroed entry, or
    // null; it is freed once below.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Err(io_err("list the guest's interfaces")(
            io::Error::last_os_error(),
        ));
    }
    let mut names = Vec::new();
    let mut entry = list;
    // SAFETY: walks the list up to its terminating entry.
    unsafe {
        while (*entry).if_index != 0 {
            names.push(
                std::ffi::CStr::from_ptr((*entry).if_name)
                    .to_string_lossy()
                    .into_owned(),
            );
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
    }
    for name in names {
        let mut req = ifreq(&name)?;
        if ioctl(libc::SIOCGIFHWADDR, &mut req).is_ok() {
            // SAFETY: SIOCGIFHWADDR set the hwaddr member of the union.
            let hw = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
            if hw[..6].iter().zip(mac).all(|(a, b)| *a as u8 == b) {
                return Ok(name);
            }
        }
    }
    Err(NetworkError::Invalid(format!(
        "the guest has no NIC with the MAC {}",
        mac.map(|b| format!("{b:02x}")).join(":")
    )))
}

fn rename(from: &str, to: &str) -> io::Result<()> {
    let mut req =
        ifreq(from).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    // SAFETY: ifru_newname is a plain char array of IFNAMSIZ.
    let newname = unsafe { &mut req.ifr_ifru.ifru_newname };
    for (dst, src) in newname.iter_mut().zip(to.bytes()) {
        *dst = src as libc::c_char;
    }
    ioctl(libc::SIOCSIFNAME, &mut req)
}

/// Sets or clears IFF_UP on interface `name` of the calling thread's
/// namespace.
fn link_set_up(name: &str, up: bool) -> io::Result<()> {
    let mut req =
        ifreq(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    ioctl(libc::SIOCGIFFLAGS, &mut req)?;
    // SAFETY: SIOCGIFFLAGS set the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    let bit = libc::IFF_UP as libc::c_short;
    req.ifr_ifru.ifru_flags = if up { flags | bit } else { flags & !bit };
    ioctl(libc::SIOCSIFFLAGS, &mut req)
}

/// One interface ioctl on a fresh socket.
fn ioctl(request: libc::Ioctl, req: &mut libc::ifreq) -> io::Result<()> {
    let sock = socket(libc::AF_INET).map_err(|e| io::Error::other(e.to_string()))?;
    // SAFETY: every request used here reads or writes one ifreq, which
    // lives across the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), request, req as *mut libc::ifreq) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A socket of `family` for interface and route ioctls.
fn socket(family: libc::c_int) -> Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let raw = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io_err("open a socket for interface requests")(
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn if_index(name: &str) -> io::Result<libc::c_int> {
    let c_name = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "not an interface name"))?;
    // SAFETY: reads the NUL-terminated name, alive across the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    libc::c_int::try_from(index).map_err(io::Error::other)
}

fn in6_addr(addr: Ipv6Addr) -> libc::in6_addr {
    libc::in6_addr {
        s6_addr: addr.octets(),
    }
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ', '\0']) {
        return Err(NetworkError::Invalid(format!(
            "{name:?} is not an interface name"
        )));
    }
    Ok(())
}

/// An ifreq naming interface `name`.
fn ifreq(name: &str) -> Result<libc::ifreq> {
    check_name(name)?;
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the kernel reads
    // it as the family says.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn mask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0))
}

/// "10.1.2.3/24" or "fd00::2/64" as an address and prefix length.
fn parse_cidr(text: &str) -> Result<(IpAddr, u8)> {
    let bad = || NetworkError::Invalid(format!("{text:?} is not an IP address/prefix"));
    let (addr, prefix) = text.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    let most = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > most {
        return Err(bad());
    }
    Ok((addr, prefix))
}

/// An IPv4 address, `what` (a neighbour) in the error.
fn parse_ip(what: &str, text: &str) -> Result<Ipv4Addr> {
    text.parse()
        .map_err(|_| NetworkError::Invalid(format!("{what} {text:?} is not an IPv4 address")))
}

/// A route's gateway, of the destination's family; "" for none.
fn parse_gateway(text: &str, dest: IpAddr) -> Result<Option<IpAddr>> {
    if text.is_empty() {
        return Ok(None);
    }
    let gateway: IpAddr = text
        .parse()
        .map_err(|_| NetworkError::Invalid(format!("gateway {text:?} is not an IP address")))?;
    if gateway.is_ipv4() != dest.is_ipv4() {
        return Err(NetworkError::Invalid(format!(
            "gateway {text:?} is not of the family of the route to {dest}"
        )));
    }
    Ok(Some(gateway))
}

fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let bad = || NetworkError::Invalid(format!("{text:?} is not a MAC address"));
    let octets = text
        .split(':')
        .map(|o| {
            if o.len() == 2 {
                u8::from_str_radix(o, 16).map_err(|_| bad())
            } else {
                Err(bad())
            }
        })
        .collect::<Result<Vec<u8>>>()?;
    octets.try_into().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Runs `f` on a thread of its own in a new network namespace; the
    /// commands it spawns run there too.
    fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare the netns");
            f()
        })
        .join()
        .unwrap()
    }

    fn ip(args: &[&str]) -> String {
        let out = Command::new("ip").args(args).output().expect("run ip");
        assert!(out.status.success(), "ip {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn interface(name: &str, mac: &str, addresses: &[&str], mtu: u32) -> Interface {
        let mut i = Interface::new();
        i.name = name.into();
        i.mac = mac.into();
        i.addresses = addresses.iter().map(|s| s.to_string()).collect();
        i.mtu = mtu;
        i
    }

    fn neighbour(ip: &str, mac: &str, device: &str) -> Neighbour {
        let mut n = Neighbour::new();
        n.ip = ip.into();
        n.mac = mac.into();
        n.device = device.into();
        n
    }

    fn route(destination: &str, gateway: &str, device: &str) -> Route {
        let mut r = Route::new();
        r.destination = destination.into();
        r.gateway = gateway.into();
        r.device = device.into();
        r
    }

    fn route_with_metric(destination: &str, gateway: &str, metric: u32) -> Route {
        let mut r = route(destination, gateway, "eth7");
        r.metric = metric;
        r
    }

    #[test]
    fn a_nic_becomes_the_pods_interface_with_its_addresses_neighbours_and_routes() {
        let (addrs, routes, lo, neighbours) = in_new_netns(|| {
            ip(&[
                "link",
                "add",
                "nic0",
                "address",
                "02:00:00:aa:bb:cc",
                "type",
                "veth",
                "peer",
                "name",
                "peer0",
            ]);
            ip(&["link", "set", "peer0", "up"]);
            let mut req = SetupPodNetworkRequest::new();
            req.interfaces = vec![interface(
                "eth7",
                "02:00:00:AA:BB:CC",
                &["10.1.2.3/24", "fd00:1::2/64", "10.9.9.9/32"],
                1400,
            )];
            // In the order `ip route` lists them: the default route's
            // gateway is reachable only through the route after it.
            req.routes = vec![
                route("0.0.0.0/0", "169.254.1.1", "eth7"),
                route("169.254.1.1/32", "", "eth7"),
                route("192.168.50.0/24", "10.1.2.254", "eth7"),
                route("172.16.0.0/16", "", "eth7"),
                route("::/0", "fe80::1", "eth7"),
                route("fd00:99::/48", "fd00:1::1", "eth7"),
                route("fd00:5::7/128", "", "eth7"),
                // One destination twice, told apart by metric.
                route_with_metric("192.168.60.0/24", "10.1.2.254", 100),
                route_with_metric("192.168.60.0/24", "10.1.2.253", 200),
                route_with_metric("fd00:60::/64", "fd00:1::1", 300),
                route_with_metric("192.168.70.0/24", "10.1.2.254", 40000),
            ];
            req.neighbours = vec![neighbour("169.254.1.1", "EE:EE:EE:EE:EE:EE", "eth7")];
            setup_pod_network(&req).unwrap();
            (
                ip(&["-o", "addr", "show"]),
                ip(&["route", "show"]) + &ip(&["-6", "route", "show"]),
                ip(&["-o", "link", "show", "eth7"]) + &ip(&["-o", "link", "show", "lo"]),
                ip(&["-4", "neigh", "show"]),
            )
        });
        assert!(
            neighbours.contains("169.254.1.1 dev eth7 lladdr ee:ee:ee:ee:ee:ee PERMANENT"),
            "{neighbours}"
        );
        assert!(addrs.contains("eth7    inet 10.1.2.3/24"), "{addrs}");
        assert!(addrs.contains("inet 10.9.9.9/32"), "{addrs}");
        // Usable at once: not tentative, waiting for duplicate detection.
        assert!(
            addrs
                .lines()
                .any(|l| l.contains("eth7    inet6 fd00:1::2/64 scope global")
                    && !l.contains("tentative")),
            "{addrs}"
        );
        assert!(routes.contains("default via fe80::1 dev eth7"), "{routes}");
        assert!(
            routes.contains("fd00:99::/48 via fd00:1::1 dev eth7"),
            "{routes}"
        );
        assert!(routes.contains("fd00:5::7 dev eth7"), "{routes}");
        assert!(
            routes.contains("192.168.60.0/24 via 10.1.2.254 dev eth7 metric 100")
                && routes.contains("192.168.60.0/24 via 10.1.2.253 dev eth7 metric 200")
                && routes.contains("fd00:60::/64 via fd00:1::1 dev eth7 metric 300")
                && routes.contains("192.168.70.0/24 via 10.1.2.254 dev eth7 metric 32766"),
            "{routes}"
        );
        assert!(addrs.contains("lo    inet 127.0.0.1/8"), "{addrs}");
        assert!(
            routes.contains("default via 169.254.1.1 dev eth7"),
            "{routes}"
        );
        assert!(routes.contains("169.254.1.1 dev eth7"), "{routes}");
        assert!(
            routes.contains("192.168.50.0/24 via 10.1.2.254 dev eth7"),
            "{routes}"
        );
        assert!(routes.contains("172.16.0.0/16 dev eth7"), "{routes}");
        assert!(
            lo.contains("eth7@peer0: <") && lo.contains("mtu 1400"),
            "{lo}"
        );
        assert!(lo.lines().all(|l| l.contains(",UP")), "{lo}");
    }

    #[test]
    fn two_nics_trade_names() {
        let links = in_new_netns(|| {
            ip(&[
                "link",
                "add",
                "eth0",
                "address",
                "02:00:00:00:00:0a",
                "type",
                "veth",
                "peer",
                "name",
                "p0",
            ]);
            ip(&[
                "link",
                "add",
                "eth1",
                "address",
                "02:00:00:00:00:0b",
                "type",
                "veth",
                "peer",
                "name",
                "p1",
            ]);
            let mut req = SetupPodNetworkRequest::new();
            req.interfaces = vec![
                interface("eth1", "02:00:00:00:00:0a", &["10.3.0.2/24"], 0),
                interface("eth0", "02:00:00:00:00:0b", &["10.4.0.2/24"], 0),
            ];
            setup_pod_network(&req).unwrap();
            ip(&["-o", "link", "show"])
        });
        let mac_of = |name: &str| {
            links
                .lines()
                .find(|l| l.contains(&format!(" {name}@")))
                .and_then(|l| l.split("link/ether ").nth(1))
                .map(|m| m[..17].to_owned())
        };
        assert_eq!(
            mac_of("eth1").as_deref(),
            Some("02:00:00:00:00:0a"),
            "{links}"
        );
        assert_eq!(
            mac_of("eth0").as_deref(),
            Some("02:00:00:00:00:0b"),
            "{links}"
        );
    }

    #[test]
    fn bad_requests_are_named() {
        in_new_netns(|| {
            let err =
                |req: &SetupPodNetworkRequest| setup_pod_network(req).unwrap_err().to_string();
            let mut req = SetupPodNetworkRequest::new();
            req.interfaces = vec![interface("eth0", "02:00:00:00:00:99", &[], 0)];
            assert_eq!(
                err(&req),
                "the guest has no NIC with the MAC 02:00:00:00:00:99"
            );
            req.interfaces = vec![interface("eth0", "02:00:00:00:00", &[], 0)];
            assert!(err(&req).contains("\"02:00:00:00:00\" is not a MAC address"));
            req.interfaces = vec![interface("eth0", "02:00:00:00:00:01", &["10.0.0.1/33"], 0)];
            assert!(err(&req).contains("\"10.0.0.1/33\" is not an IP address/prefix"));
            req.interfaces = vec![interface("eth0", "02:00:00:00:00:01", &["fd00::1/129"], 0)];
            assert!(err(&req).contains("\"fd00::1/129\" is not an IP address/prefix"));
            req.interfaces.clear();
            req.routes = vec![route("10.0.0.0/8", "fe80::1", "eth0")];
            assert!(err(&req)
                .contains("gateway \"fe80::1\" is not of the family of the route to 10.0.0.0"));
            req.interfaces = vec![interface(
                "fourteen-chars",
                "02:00:00:00:00:01",
                &["10.0.0.1/8", "10.0.0.2/8"],
                0,
            )];
            assert!(err(&req).contains(
                "fourteen-chars cannot take a second IPv4 address (10.0.0.2/8): \
                 its alias fourteen-chars:1 is longer than 15 bytes"
            ));
            req.interfaces.clear();
            req.routes = vec![route("10.0.0.0/8", "", "a-name-longer-than-ifnamsiz")];
            assert!(err(&req).contains("is not an interface name"));
            req.routes = vec![route("10.0.0.0/8", "10.0.0.1", "eth9")];
            assert!(err(&req).contains("add the route to 10.0.0.0/8 via 10.0.0.1 on eth9"));
            req.routes.clear();
            req.neighbours = vec![neighbour("10.0.0.300", "02:00:00:00:00:01", "eth0")];
            assert!(err(&req).contains("neighbour \"10.0.0.300\" is not an IPv4 address"));
            req.neighbours = vec![neighbour("10.0.0.1", "02:00:00:00:00:01", "eth9")];
            assert!(err(&req).contains("add the neighbour 10.0.0.1 at 02:00:00:00:00:01 on eth9"));
        });
    }
}
