//! [`NetlinkOps`] on the real kernel: rtnetlink for links, addresses,
//! routes and tc, `/dev/net/tun` for the taps.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use futures::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkFlag, LinkInfo};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirror, TcActionMirrorOption, TcActionOption,
    TcActionType, TcFilterU32Option, TcHandle, TcMirror, TcMirrorActionType, TcU32Key,
    TcU32Selector, TcU32SelectorFlag,
};
use rtnetlink::{Handle, IpVersion};
use runvm_netlink::nl;
use runvm_protocol::IpNet;

use super::snapshot::{Address, Link, RouteEntry, Snapshot};
use super::tc::{Action, Filter};
use super::{NetError, NetlinkOps};

fn net(ip: IpAddr, len: u8, what: &str) -> Result<IpNet, NetError> {
    IpNet::new(ip, len).map_err(|_| NetError::BadPrefix {
        what: format!("{what} {ip}"),
        len,
    })
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// An rtnetlink connection to the supervisor's network namespace (the
/// container's).
pub struct RtNetlink {
    handle: Handle,
}

impl RtNetlink {
    pub fn connect() -> Result<Self, NetError> {
        let handle = runvm_netlink::connect().map_err(|source| NetError::Io {
            what: "open a netlink socket".into(),
            source,
        })?;
        Ok(Self { handle })
    }

    async fn links(&self) -> Result<Vec<Link>, NetError> {
        let mut links = Vec::new();
        let mut stream = self.handle.link().get().execute();
        while let Some(msg) = stream.try_next().await.map_err(nl("list links"))? {
            let mut link = Link {
                index: msg.header.index,
                name: String::new(),
                link_type: u16::from(msg.header.link_layer_type).into(),
                kind: None,
                hw_address: Vec::new(),
                mtu: None,
                flags: msg
                    .header
                    .flags
                    .iter()
                    .fold(0, |all, f: &LinkFlag| all | u32::from(*f)),
            };
            for a in &msg.attributes {
                match a {
                    LinkAttribute::IfName(n) => link.name = n.clone(),
                    LinkAttribute::Address(m) => link.hw_address = m.clone(),
                    LinkAttribute::Mtu(m) => link.mtu = Some(*m),
                    LinkAttribute::LinkInfo(infos) => {
                        for i in infos {
                            if let LinkInfo::Kind(k) = i {
                                link.kind = Some(k.to_string());
                            }
                        }
                    }
                    _ => {}
                }
            }
            links.push(link);
        }
        Ok(links)
    }

    async fn addresses(&self) -> Result<Vec<Address>, NetError> {
        let mut addresses = Vec::new();
        let mut stream = self.handle.address().get().execute();
        while let Some(msg) = stream.try_next().await.map_err(nl("list addresses"))? {
            let len = msg.header.prefix_len;
            let mut address = Address {
                link: msg.header.index,
                address: None,
                local: None,
            };
            for a in &msg.attributes {
                match a {
                    AddressAttribute::Address(ip) => {
                        address.address = Some(net(*ip, len, "the address")?)
                    }
                    AddressAttribute::Local(ip) => address.local = Some(*ip),
                    _ => {}
                }
            }
            addresses.push(address);
        }
        Ok(addresses)
    }

    async fn routes(&self, version: IpVersion) -> Result<Vec<RouteEntry>, NetError> {
        let unspecified = match version {
            IpVersion::V4 => IpAddr::from([0u8; 4]),
            IpVersion::V6 => IpAddr::from([0u16; 8]),
        };
        let mut routes = Vec::new();
        let mut stream = self.handle.route().get(version).execute();
        while let Some(msg) = stream.try_next().await.map_err(nl("list routes"))? {
            routes.push(route_entry(&msg, unspecified)?);
        }
        Ok(routes)
    }
}

fn route_entry(msg: &RouteMessage, unspecified: IpAddr) -> Result<RouteEntry, NetError> {
    let mut dst = None;
    let mut r = RouteEntry {
        destination: IpNet::default(),
        gateway: None,
        oif: None,
        priority: None,
        table: u32::from(msg.header.table),
        protocol: u8::from(msg.header.protocol).into(),
        kind: u8::from(msg.header.kind).into(),
    };
    for a in &msg.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = route_ip(d),
            RouteAttribute::Gateway(g) => r.gateway = route_ip(g),
            RouteAttribute::Oif(i) => r.oif = Some(*i),
            RouteAttribute::Priority(p) => r.priority = Some(*p),
            RouteAttribute::Table(t) => r.table = *t,
            _ => {}
        }
    }
    r.destination = net(
        dst.unwrap_or(unspecified),
        msg.header.destination_prefix_length,
        "a route to",
    )?;
    Ok(r)
}

impl NetlinkOps for RtNetlink {
    type Tap = OwnedFd;

    async fn snapshot(&mut self) -> Result<Snapshot, NetError> {
        let mut routes = self.routes(IpVersion::V4).await?;
        routes.extend(self.routes(IpVersion::V6).await?);
        Ok(Snapshot {
            links: self.links().await?,
            addresses: self.addresses().await?,
            routes,
        })
    }

    async fn create_tap(&mut self, name: &str) -> Result<OwnedFd, NetError> {
        open_tap(name)
    }

    async fn link_index(&mut self, name: &str) -> Result<u32, NetError> {
        let mut stream = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match stream.try_next().await {
            Ok(Some(msg)) => Ok(msg.header.index),
            Ok(None) => Err(NetError::TapVanished(name.to_owned())),
            Err(e) => Err(nl(format!("find {name}"))(e).into()),
        }
    }

    async fn set_mtu_and_up(&mut self, index: u32, name: &str, mtu: u32) -> Result<(), NetError> {
        self.handle
            .link()
            .set(index)
            .mtu(mtu)
            .up()
            .execute()
            .await
            .map_err(nl(format!("bring up {name} with MTU {mtu}")))?;
        Ok(())
    }

    async fn add_ingress_qdisc(&mut self, index: u32, name: &str) -> Result<(), NetError> {
        // An engine that keeps the namespace across restarts (Podman) hands
        // over the link with the ingress qdisc of the run before, whose
        // filters point at a tap that is gone: it is deleted, filters and
        // all, and made anew. ENOENT (none there) is the usual case.
        let mut del = self.handle.qdisc().del(index as i32);
        del.message_mut().header.parent = TcHandle::INGRESS;
        del.message_mut().header.handle = TcHandle::from(0xffff_0000);
        match del.execute().await {
            Ok(()) => tracing::debug!("removed the ingress qdisc a run before left on {name}"),
            Err(rtnetlink::Error::NetlinkError(e))
                if e.raw_code() == -libc::ENOENT || e.raw_code() == -libc::EINVAL => {}
            Err(e) => return Err(nl(format!("remove the old ingress qdisc of {name}"))(e).into()),
        }
        self.handle
            .qdisc()
            .add(index as i32)
            .ingress()
            .execute()
            .await
            .map_err(nl(format!("add an ingress qdisc to {name}")))?;
        Ok(())
    }

    async fn add_filter(
        &mut self,
        on: (u32, &str),
        filter: &Filter,
        other: (u32, &str),
    ) -> Result<(), NetError> {
        let what = format!(
            "add a filter ({:?}, {:?}) to the ingress of {}",
            filter.matches, filter.action, on.1
        );
        let u32 = filter.matches.u32();
        let selector = {
            let mut sel = TcU32Selector::default();
            sel.flags = vec![TcU32SelectorFlag::Terminal];
            // The kernel compares the packet's words, in network order,
            // with mask and value as they are stored: big-endian too.
            sel.keys = if u32.keys.is_empty() {
                vec![TcU32Key::default()] // matches every frame
            } else {
                u32.keys
                    .iter()
                    .map(|k| {
                        let mut key = TcU32Key::default();
                        key.mask = k.mask.to_be();
                        key.val = k.value.to_be();
                        key.off = k.offset;
                        key
                    })
                    .collect()
            };
            sel.nkeys = u8::try_from(sel.keys.len()).expect("a handful of keys");
            sel
        };
        let mut options = vec![TcFilterU32Option::Selector(selector)];
        let mirred = match filter.action {
            Action::Stack => None,
            Action::Copy => Some((TcMirrorActionType::EgressMirror, TcActionType::Pipe)),
            Action::Redirect => Some((TcMirrorActionType::EgressRedir, TcActionType::Stolen)),
        };
        if let Some((eaction, then)) = mirred {
            let mut parms = TcMirror::default();
            parms.generic.action = then;
            parms.eaction = eaction;
            parms.ifindex = other.0;
            let mut action = TcAction::default();
            action.attributes = vec![
                TcActionAttribute::Kind(TcActionMirror::KIND.to_string()),
                TcActionAttribute::Options(vec![TcActionOption::Mirror(
                    TcActionMirrorOption::Parms(parms),
                )]),
            ];
            options.push(TcFilterU32Option::Action(vec![action]));
        }
        self.handle
            .traffic_filter(on.0 as i32)
            .add()
            .parent(0xffff_0000)
            .priority(filter.priority)
            .protocol(u32.protocol.to_be())
            .u32(&options)
            .map_err(nl(what.clone()))?
            .execute()
            .await
            .map_err(nl(what))?;
        Ok(())
    }
}

/// Creates a (non-persistent) tap device and returns its descriptor.
fn open_tap(name: &str) -> Result<OwnedFd, NetError> {
    let io = |what: String| move |source| NetError::Io { what, source };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(io("open /dev/net/tun".into()))?;
    // SAFETY: `ifreq` is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // TUNSETIFF is _IOW('T', 202, int) but takes a pointer to an ifreq.
    nix::ioctl_write_ptr_bad!(tunsetiff, libc::TUNSETIFF, libc::ifreq);
    // SAFETY: TUNSETIFF reads an `ifreq` from a valid pointer to an
    // initialised structure.
    unsafe { tunsetiff(file.as_raw_fd(), &req) }
        .map_err(|e| io(format!("create tap {name}"))(e.into()))?;
    // Close-on-exec stays set: only QEMU inherits it (see `sandbox`), never
    // virtiofsd.
    Ok(OwnedFd::from(file))
}
