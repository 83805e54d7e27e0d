//! Networks connected or disconnected while the container runs (`docker
//! network connect` / `disconnect`).
//!
//! Docker changes the container's namespace as it would under runc: it
//! moves a new veth in (renamed, addressed, then brought up) or takes one
//! away, and changes routes. The supervisor watches the namespace with
//! netlink; once a burst of changes has settled, it takes a snapshot and
//! compares the plan made from it with what the VM has ([`diff`], a pure
//! function):
//!
//! 1. each new link (once it is up) gets a tap wired to it as at boot and
//!    a NIC plugged into the VM through QEMU's monitor, on a free slot of
//!    the NIC bridge;
//! 2. the guest is sent the whole new network and configures it (new NICs
//!    found by MAC, the NICs of gone links retired, routes added and
//!    removed) and answers;
//! 3. the NIC of each gone link is unplugged, and its tap goes with it.

use std::os::fd::AsFd;
use std::time::Duration;

use runvm_protocol::session::{read_frame_limited, write_frame, Mux};
use runvm_protocol::{GuestNetwork, Interface, MacAddr, NetworkUpdated, Route, StreamHeader};
use serde_json::json;

use super::plan::{tap_name, HostPlan, NicPlan};
use super::snapshot::Snapshot;
use super::{apply, netlink, NetError, NetlinkOps};
use crate::qmp::Qmp;
use crate::vmm;

/// How long the namespace must be quiet before the supervisor acts: Docker
/// makes a connection in a quick burst of changes.
const SETTLE: Duration = Duration::from_millis(300);

/// How long the guest may take to configure a change, and to give up an
/// unplugged NIC.
const GUEST_WAIT: Duration = Duration::from_secs(60);
const UNPLUG_WAIT: Duration = Duration::from_secs(20);

/// A NIC in the VM, standing for a link of the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plugged {
    /// The namespace's link (its index).
    pub link: u32,
    /// The slot on the NIC bridge; QEMU's ids are `nic{slot}` and
    /// `net{slot}`.
    pub slot: u8,
    pub interface: Interface,
}

/// What differs between the VM's NICs and a plan of the namespace.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Changes {
    /// Links to plug in, with the slot each gets.
    pub plug: Vec<(NicPlan, u8)>,
    /// Indexes into the plugged NICs of those whose link is gone.
    pub unplug: Vec<usize>,
    /// The guest must be told: NICs come or go, or an interface's
    /// addresses or MTU, or the routes, changed.
    pub tell_guest: bool,
}

/// Compares the plugged NICs and the routes the guest has with `plan`.
///
/// A link is plugged in only once it is up (Docker brings a link up after
/// renaming and addressing it) and while a slot is free; a plugged NIC
/// whose link is gone, or has another MAC now, is unplugged.
pub fn diff(
    plugged: &[Plugged],
    routes: &[Route],
    plan: &HostPlan,
    snapshot: &Snapshot,
) -> Changes {
    let is_up = |index: u32| {
        snapshot
            .links
            .iter()
            .any(|l| l.index == index && l.flags & libc::IFF_UP as u32 != 0)
    };
    let mut out = Changes::default();
    for (i, p) in plugged.iter().enumerate() {
        let still = plan
            .nics
            .iter()
            .any(|n| n.link == p.link && n.interface.mac == p.interface.mac);
        if !still {
            out.unplug.push(i);
        }
    }
    // A slot whose NIC is to be unplugged is not free yet: QEMU holds its
    // device (and the guest the NIC) until the unplug is done, which
    // comes after the plugging of this round.
    let mut free = vmm::NIC_SLOTS.filter(|s| !plugged.iter().any(|p| p.slot == *s));
    for n in &plan.nics {
        if plugged.iter().any(|p| p.link == n.link) || !is_up(n.link) {
            continue;
        }
        match free.next() {
            Some(slot) => out.plug.push((n.clone(), slot)),
            None => tracing::warn!(
                "no free slot for another NIC ({} at most): {} is not in the VM",
                vmm::NIC_SLOTS.count(),
                n.interface.name
            ),
        }
    }
    let changed_interface = plugged.iter().any(|p| {
        plan.nics
            .iter()
            .any(|n| n.link == p.link && n.interface != p.interface)
    });
    out.tell_guest = !out.plug.is_empty()
        || !out.unplug.is_empty()
        || changed_interface
        || plan.routes != routes;
    out
}

/// The tap of the NIC in `slot` (the boot NICs' too: slot N has the tap
/// the boot plan named for NIC N-1).
pub fn slot_tap(slot: u8) -> String {
    tap_name(usize::from(slot) - 1)
}

/// Starts watching the namespace, before its boot snapshot is taken, so
/// that no change made meanwhile is missed.
pub fn watch() -> Option<tokio::sync::mpsc::Receiver<()>> {
    match runvm_netlink::watch() {
        Ok(rx) => Some(rx),
        Err(e) => {
            tracing::warn!("cannot watch the container's network, so networks connected while it runs will not reach the VM: {e}");
            None
        }
    }
}

/// Keeps the VM's NICs in step with the namespace, on every notice of
/// `changes` (from [`watch`]), until the watch ends. `plugged` and
/// `routes` are what the VM got at boot.
pub async fn follow(
    mut changes: tokio::sync::mpsc::Receiver<()>,
    mut qmp: Qmp,
    mux: Mux,
    mut plugged: Vec<Plugged>,
    mut routes: Vec<Route>,
    dns_relay: bool,
) {
    while changes.recv().await.is_some() {
        // Let the burst settle.
        loop {
            match tokio::time::timeout(SETTLE, changes.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return,
                Err(_) => break,
            }
        }
        let synced = sync(&mut qmp, &mux, &mut plugged, &mut routes, dns_relay).await;
        if let Err(e) = synced {
            tracing::warn!(
                "the VM's network could not follow the container's: {}",
                runvm_contract::report::ErrorChain::chain(&e)
            );
        }
    }
}

/// What failed while following a change.
#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("cannot plug {name}'s NIC into the VM")]
    Plug {
        name: String,
        #[source]
        source: crate::qmp::QmpError,
    },
    #[error("cannot tell the guest about the new network")]
    Channel(#[source] runvm_protocol::FrameError),
    #[error("the guest could not take the new network: {0}")]
    Guest(String),
}

async fn sync(
    qmp: &mut Qmp,
    mux: &Mux,
    plugged: &mut Vec<Plugged>,
    routes: &mut Vec<Route>,
    dns_relay: bool,
) -> Result<(), HotplugError> {
    let mut ops = netlink::RtNetlink::connect()?;
    let snapshot = ops.snapshot().await?;
    let plan = super::plan(&snapshot);
    let changes = diff(plugged, routes, &plan, &snapshot);
    if !changes.tell_guest {
        return Ok(());
    }
    // The first failure is reported; the steps after it are still taken,
    // so that what QEMU has and what `plugged` says stay the same.
    let mut failed: Option<HotplugError> = None;
    // 1. NICs whose link is gone leave first: the guest retires them, then
    //    they are unplugged. A network disconnected and connected again
    //    in one burst comes back with the same MAC (Docker derives it from
    //    the address); were the old NIC still there, the guest could not
    //    tell the two apart. A NIC that does not go keeps its slot.
    if !changes.unplug.is_empty() {
        let gone: Vec<Plugged> = changes.unplug.iter().map(|&i| plugged[i].clone()).collect();
        plugged.retain(|p| !gone.contains(p));
        let network = guest_network(plugged, &plan, dns_relay);
        match tell_guest(mux, &network).await {
            Ok(()) => *routes = network.routes,
            Err(e) => failed = Some(e),
        }
        for p in gone {
            if unplug(qmp, p.slot).await {
                tracing::debug!("unplugged {} from slot {}", p.interface.name, p.slot);
            } else {
                plugged.push(p);
            }
        }
    }
    // 2. New links get NICs on free slots.
    let changes = diff(plugged, routes, &plan, &snapshot);
    let mut new_nics = false;
    for (nic, slot) in changes.plug {
        match plug_link(&mut ops, qmp, plugged, nic, slot).await {
            Ok(()) => new_nics = true,
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    // 3. The guest configures them (and any change of addresses, MTU or
    //    routes).
    if new_nics || changes.tell_guest {
        let network = guest_network(plugged, &plan, dns_relay);
        match tell_guest(mux, &network).await {
            Ok(()) => *routes = network.routes,
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    match failed {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// The network the guest is to have: the plugged NICs whose link is in
/// `plan`, with their current data, in the namespace's order (the order
/// the guest names them in), and the plan's routes (the guest leaves out
/// those out of a NIC it is not given).
fn guest_network(plugged: &mut [Plugged], plan: &HostPlan, dns_relay: bool) -> GuestNetwork {
    let mut interfaces = Vec::new();
    for n in &plan.nics {
        if let Some(p) = plugged.iter_mut().find(|p| p.link == n.link) {
            p.interface = n.interface.clone();
            interfaces.push(n.interface.clone());
        }
    }
    GuestNetwork {
        interfaces,
        routes: plan.routes.clone(),
        dns_relay,
    }
}

/// Wires a tap to the link of `nic` and plugs a NIC for it into `slot`.
async fn plug_link(
    ops: &mut netlink::RtNetlink,
    qmp: &mut Qmp,
    plugged: &mut Vec<Plugged>,
    nic: NicPlan,
    slot: u8,
) -> Result<(), HotplugError> {
    let name = nic.interface.name.clone();
    let mut one = nic;
    one.tap = slot_tap(slot);
    let link = one.link;
    let (mut nics, _) = apply(
        ops,
        HostPlan {
            nics: vec![one],
            ..HostPlan::default()
        },
    )
    .await?;
    let nic = nics.remove(0);
    plug(qmp, &nic.interface.mac, slot, nic.tap.as_fd())
        .await
        .map_err(|source| HotplugError::Plug { name, source })?;
    tracing::debug!(
        "plugged {} ({}) into slot {slot}",
        nic.interface.name,
        nic.interface.mac
    );
    plugged.push(Plugged {
        link,
        slot,
        interface: nic.interface,
    });
    // QEMU has its own copy of the tap now.
    Ok(())
}

/// Hands the tap to QEMU and plugs a NIC with `mac` into `slot`.
async fn plug(
    qmp: &mut Qmp,
    mac: &MacAddr,
    slot: u8,
    tap: std::os::fd::BorrowedFd<'_>,
) -> Result<(), crate::qmp::QmpError> {
    let fd_name = format!("tap{slot}");
    qmp.send_fd(&fd_name, tap).await?;
    qmp.execute(
        "netdev_add",
        json!({"type": "tap", "id": format!("net{slot}"), "fd": fd_name}),
    )
    .await?;
    let added = qmp
        .execute(
            "device_add",
            json!({
                "driver": "virtio-net-pci",
                "id": format!("nic{slot}"),
                "netdev": format!("net{slot}"),
                "mac": mac.to_string(),
                "bus": vmm::NIC_BRIDGE,
                "addr": format!("{slot:#x}"),
                "romfile": "",
            }),
        )
        .await;
    if let Err(e) = added {
        // Without its device the netdev would hold the tap and the id:
        // the next plug into this slot would be refused.
        let _ = qmp
            .execute("netdev_del", json!({"id": format!("net{slot}")}))
            .await;
        return Err(e);
    }
    Ok(())
}

/// Unplugs the NIC in `slot` and, once the guest has let it go, its
/// netdev (which closes the tap). True once both are gone. A guest that
/// never lets go keeps a NIC without a link: nothing reaches it, and its
/// slot stays taken (a later round tries again).
async fn unplug(qmp: &mut Qmp, slot: u8) -> bool {
    let id = format!("nic{slot}");
    // A second try finds the device on its way out already (refused) or
    // gone (its DEVICE_DELETED kept): the wait tells.
    let wait = match qmp.execute("device_del", json!({"id": id})).await {
        Ok(_) => UNPLUG_WAIT,
        Err(e) => {
            tracing::debug!("device_del {id}: {e}");
            Duration::from_millis(100)
        }
    };
    if !qmp.wait_device_deleted(&id, wait).await {
        tracing::warn!("the guest did not let {id} go within {wait:?}");
        return false;
    }
    if let Err(e) = qmp
        .execute("netdev_del", json!({"id": format!("net{slot}")}))
        .await
    {
        tracing::warn!("cannot remove net{slot}: {e}");
        return false;
    }
    true
}

async fn tell_guest(mux: &Mux, network: &GuestNetwork) -> Result<(), HotplugError> {
    let mut s = mux
        .open_typed(&StreamHeader::Network)
        .await
        .map_err(HotplugError::Channel)?;
    write_frame(&mut s, network)
        .await
        .map_err(HotplugError::Channel)?;
    let answer = tokio::time::timeout(
        GUEST_WAIT,
        read_frame_limited::<_, NetworkUpdated>(&mut s, runvm_protocol::framing::MAX_SMALL_FRAME),
    )
    .await
    .map_err(|_| HotplugError::Guest(format!("no answer within {GUEST_WAIT:?}")))?
    .map_err(HotplugError::Channel)?;
    match answer.error {
        None => Ok(()),
        Some(e) => Err(HotplugError::Guest(e)),
    }
}
