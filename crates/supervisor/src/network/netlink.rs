//! Moving the container's network into the VM.
//!
//! For every Ethernet interface of the container (Docker's veth), the
//! supervisor records its MAC, MTU, addresses and routes, creates a tap
//! device for QEMU, and joins the two with tc: everything that arrives on
//! the veth is redirected to the tap and the other way round (an ingress
//! qdisc with a match-all u32 filter and a mirred redirect, as Kata's
//! "tcfilter" model does). The guest NIC gets the veth's MAC and the guest
//! gets the addresses, so to the rest of the network the VM *is* the
//! container. The addresses are removed from the veth so the container's own
//! stack never answers in the guest's place.
//!
//! The tap is opened by the supervisor and handed to QEMU as a file
//! descriptor; it is not persistent, so it disappears with QEMU.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use futures::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkLayerType};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteProtocol, RouteType};
use rtnetlink::{Handle, IpVersion};

use crate::error::{Result, SupervisorError};
use runvm_protocol::{Interface, IpNet, MacAddr, Route};

/// One container interface handed to the VM.
pub struct Nic {
    pub interface: Interface,
    /// The tap's file descriptor, inherited by QEMU.
    pub tap: OwnedFd,
}

fn err(what: &str, e: impl std::fmt::Display) -> SupervisorError {
    SupervisorError::Network(format!("{what}: {e}"))
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// Captures the container's interfaces and routes, and wires each one to a
/// new tap device.
pub async fn capture() -> Result<(Vec<Nic>, Vec<Route>)> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| err("open netlink", e))?;
    tokio::spawn(conn);

    struct Link {
        index: u32,
        name: String,
        mac: MacAddr,
        mtu: u32,
    }
    let mut links = Vec::new();
    let mut stream = handle.link().get().execute();
    while let Some(msg) = stream.try_next().await.map_err(|e| err("list links", e))? {
        if msg.header.link_layer_type != LinkLayerType::Ether {
            continue;
        }
        let (mut name, mut mac, mut mtu) = (String::new(), Vec::new(), 1500);
        for a in &msg.attributes {
            match a {
                LinkAttribute::IfName(n) => name = n.clone(),
                LinkAttribute::Address(m) => mac = m.clone(),
                LinkAttribute::Mtu(m) => mtu = *m,
                _ => {}
            }
        }
        if let Ok(mac) = MacAddr::try_from(&mac[..]) {
            if !name.starts_with("runvm") {
                links.push(Link {
                    index: msg.header.index,
                    name,
                    mac,
                    mtu,
                });
            }
        }
    }

    let mut routes = Vec::new();
    for v6 in [false, true] {
        let version = if v6 { IpVersion::V6 } else { IpVersion::V4 };
        let mut stream = handle.route().get(version).execute();
        while let Some(msg) = stream.try_next().await.map_err(|e| err("list routes", e))? {
            if msg.header.protocol == RouteProtocol::Kernel
                || msg.header.kind != RouteType::Unicast
                || msg.header.table != 254
            {
                continue;
            }
            let (mut dst, mut gw, mut oif, mut metric) = (None, None, None, None);
            for a in &msg.attributes {
                match a {
                    RouteAttribute::Destination(d) => dst = route_ip(d),
                    RouteAttribute::Gateway(g) => gw = route_ip(g),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Priority(p) => metric = Some(*p),
                    _ => {}
                }
            }
            let Some(link) = oif.and_then(|i| links.iter().find(|l| l.index == i)) else {
                continue;
            };
            let dst = dst.unwrap_or(if v6 {
                IpAddr::from([0u16; 8])
            } else {
                IpAddr::from([0u8; 4])
            });
            if let IpAddr::V6(v6) = dst {
                // Link-local and multicast routes come with the interface.
                if v6.segments()[0] & 0xffc0 == 0xfe80 || v6.segments()[0] & 0xff00 == 0xff00 {
                    continue;
                }
            }
            let len = msg.header.destination_prefix_length;
            let destination = IpNet::new(dst, len)
                .map_err(|e| err(&format!("read the route to {dst}/{len}"), e))?;
            routes.push(Route {
                destination,
                gateway: gw,
                device: link.name.clone(),
                metric: if v6 { None } else { metric },
            });
        }
    }

    let mut nics = Vec::new();
    for (i, link) in links.iter().enumerate() {
        let mut addresses = Vec::new();
        let mut to_delete = Vec::new();
        let mut stream = handle
            .address()
            .get()
            .set_link_index_filter(link.index)
            .execute();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| err("list addresses", e))?
        {
            let ip = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            let Some(ip) = ip else { continue };
            if let IpAddr::V6(v6) = ip {
                if v6.segments()[0] & 0xffc0 == 0xfe80 {
                    continue; // the guest makes its own link-local address
                }
            }
            let len = msg.header.prefix_len;
            let address =
                IpNet::new(ip, len).map_err(|e| err(&format!("read the address {ip}/{len}"), e))?;
            addresses.push(address);
            to_delete.push(msg);
        }
        let tap_name = format!("runvm-tap{i}");
        let tap = open_tap(&tap_name)?;
        let tap_index = link_index(&handle, &tap_name).await?;
        handle
            .link()
            .set(tap_index)
            .mtu(link.mtu)
            .up()
            .execute()
            .await
            .map_err(|e| err(&format!("bring up {tap_name}"), e))?;
        for msg in to_delete {
            handle
                .address()
                .del(msg)
                .execute()
                .await
                .map_err(|e| err(&format!("remove an address from {}", link.name), e))?;
        }
        redirect(&handle, link.index, tap_index).await?;
        redirect(&handle, tap_index, link.index).await?;
        nics.push(Nic {
            interface: Interface {
                name: link.name.clone(),
                mac: link.mac,
                mtu: link.mtu,
                addresses,
            },
            tap,
        });
    }
    Ok((nics, routes))
}

async fn link_index(handle: &Handle, name: &str) -> Result<u32> {
    let mut stream = handle.link().get().match_name(name.to_owned()).execute();
    match stream.try_next().await {
        Ok(Some(msg)) => Ok(msg.header.index),
        Ok(None) => Err(err(&format!("find {name}"), "no such link")),
        Err(e) => Err(err(&format!("find {name}"), e)),
    }
}

/// Redirects every frame arriving on `from` out of `to`.
async fn redirect(handle: &Handle, from: u32, to: u32) -> Result<()> {
    handle
        .qdisc()
        .add(from as i32)
        .ingress()
        .execute()
        .await
        .map_err(|e| err("add an ingress qdisc", e))?;
    handle
        .traffic_filter(from as i32)
        .add()
        .parent(0xffff_0000)
        .protocol((libc::ETH_P_ALL as u16).to_be())
        .redirect(to)
        .map_err(|e| err("build a redirect filter", e))?
        .execute()
        .await
        .map_err(|e| err("add a redirect filter", e))?;
    Ok(())
}

/// Creates a (non-persistent) tap device and returns its descriptor.
fn open_tap(name: &str) -> Result<OwnedFd> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| err("open /dev/net/tun", e))?;
    // SAFETY: `ifreq` is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF reads an `ifreq` from a valid pointer to an
    // initialised structure.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF as _, &req) };
    if rc < 0 {
        return Err(err(
            &format!("create tap {name}"),
            std::io::Error::last_os_error(),
        ));
    }
    // Close-on-exec stays set: only QEMU inherits it (see `sandbox`), never
    // virtiofsd.
    Ok(OwnedFd::from(file))
}
