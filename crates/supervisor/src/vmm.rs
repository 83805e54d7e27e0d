//! The helpers that make the VM: virtiofsd and QEMU, their command lines
//! (pure functions, unit-tested) and their startup.

use runvm_contract::guest::{AGENT_PORT_NAME, DEBUG_FLAG, MODULES_TAG, PROBE_FLAG, ROOTFS_TAG};
use runvm_contract::sockets::MODULES_VIRTIOFS as MODULES_SOCKET;
use runvm_contract::sockets::VIRTIOFS as VIRTIOFS_SOCKET;
use runvm_contract::sockets::{
    AGENT as AGENT_SOCKET, CONSOLE as CONSOLE_SOCKET, QMP as QMP_SOCKET,
};
use runvm_contract::{Accel, VmConfig};

/// The bridge every NIC sits on, so that any can be plugged in or out
/// while the VM runs (devices on q35's root bus cannot). One PCI bridge
/// costs the boot nothing measurable under TCG; six PCIe root ports, one
/// per NIC, cost about 0.3 s.
pub const NIC_BRIDGE: &str = "nics";

/// Slots of [`NIC_BRIDGE`] for NICs: 1 to 31 (slot 0 is the bridge's own
/// hot-plug controller's).
pub const NIC_SLOTS: std::ops::RangeInclusive<u8> = 1..=31;

/// A NIC of the VM: its MAC, the tap descriptor QEMU inherits and its slot
/// on [`NIC_BRIDGE`].
pub struct NicArg {
    pub mac: String,
    pub tap_fd: i32,
    pub slot: u8,
}

/// QEMU's `-device` value for a NIC with id `nic{slot}` on netdev
/// `net{slot}`, whether given at start or plugged in later.
pub fn nic_device(mac: &str, slot: u8) -> String {
    // No option ROM: the VM never boots from the network.
    format!("virtio-net-pci,id=nic{slot},netdev=net{slot},mac={mac},bus={NIC_BRIDGE},addr={slot:#x},romfile=")
}

/// virtiofsd's arguments: serve the container's root, shared with no
/// sandbox of its own (the container is the sandbox), with O_PATH
/// descriptors (file handles need CAP_DAC_READ_SEARCH on the host's
/// filesystem and fail on overlayfs).
///
/// The supervisor makes the listening socket itself and hands it over as
/// `listen_fd`, so QEMU can never try to connect before virtiofsd listens.
///
/// A container without `CAP_MKNOD` gets a virtiofsd without it too: the
/// guest kernel refuses the workload's `mknod` of a device node, but a
/// guest kernel of the image's (or one a privileged workload changed) need
/// not, and virtiofsd would make the node on the host's storage.
pub fn virtiofsd_args(cfg: &VmConfig, listen_fd: i32) -> Vec<String> {
    let mut args = vec![
        format!("--fd={listen_fd}"),
        format!("--shared-dir={}", cfg.rootfs),
        "--sandbox=none".into(),
        "--inode-file-handles=never".into(),
        "--cache=auto".into(),
        "--announce-submounts".into(),
        "--xattr".into(),
        format!("--log-level={}", if cfg.debug { "info" } else { "error" }),
    ];
    // A --device outside /dev is made by the agent on the shared root,
    // through virtiofsd, as runc makes it whatever the capabilities.
    let device_on_root = cfg
        .container
        .devices
        .iter()
        .any(|d| !d.path.starts_with("/dev/"));
    let mknod = device_on_root
        || cfg
            .container
            .process
            .capabilities
            .as_ref()
            .is_none_or(|c| c.bounding.iter().any(|n| n == "CAP_MKNOD"));
    if !mknod {
        args.push("--modcaps=-mknod".into());
    }
    args
}

/// The second virtiofsd's arguments, when the kernel has modules: serve
/// them read-only (they never change while the VM runs, so the guest may
/// cache them for good).
pub fn modules_virtiofsd_args(cfg: &VmConfig, listen_fd: i32) -> Vec<String> {
    vec![
        format!("--fd={listen_fd}"),
        format!("--shared-dir={}", runvm_contract::paths::MODULES),
        "--readonly".into(),
        "--sandbox=none".into(),
        "--inode-file-handles=never".into(),
        "--cache=always".into(),
        format!("--log-level={}", if cfg.debug { "info" } else { "error" }),
    ]
}

/// The kernel command line; `extra` adds flags for the agent.
pub fn kernel_cmdline(cfg: &VmConfig, extra: &[&str]) -> String {
    let mut parts = vec![
        "console=ttyS0",
        "panic=-1",
        "rdinit=/init",
        "pci=lastbus=0",
        "random.trust_cpu=on",
        "8250.nr_uarts=1",
        // The boot-time check that the timer interrupt ticks fails when the
        // host is too busy to run the vCPU (many TCG VMs booting at once):
        // "IO-APIC + timer doesn't work!", a panic. Kata skips it too.
        "no_timer_check",
    ];
    if cfg.debug {
        // The agent's debug entries, on the console.
        parts.push(DEBUG_FLAG);
    } else {
        parts.push("quiet");
    }
    parts.extend(extra);
    parts.extend(cfg.kernel_append.iter().map(String::as_str));
    parts.join(" ")
}

/// The machine every runvm VM is: accelerator, CPUs, shared memory, the
/// kernel and initramfs, the agent's virtio-serial port on the chardev
/// `agent_chardev`, a random number source, and QEMU's own sandbox. The
/// container's VM ([`qemu_args`]) and the boot probe ([`probe_args`]) add
/// only how they are wired to the host, so the probe measures this very
/// machine.
fn machine_args(cfg: &VmConfig, cmdline_extra: &[&str], agent_chardev: String) -> Vec<String> {
    let mem = cfg.memory_mib;
    let mut a: Vec<String> = vec![
        "-name".into(),
        "runvm".into(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-nographic".into(),
        "-no-reboot".into(),
        "-machine".into(),
        "q35,memory-backend=mem".into(),
    ];
    if let Some(bios) = &cfg.firmware {
        a.extend(["-bios".into(), bios.clone()]);
    }
    match cfg.accel {
        Accel::Kvm => a.extend(["-accel".into(), "kvm".into(), "-cpu".into(), "host".into()]),
        Accel::Tcg => a.extend([
            "-accel".into(),
            "tcg,thread=multi,tb-size=64".into(),
            "-cpu".into(),
            "max".into(),
        ]),
    }
    a.extend([
        "-smp".into(),
        cfg.vcpus.to_string(),
        "-m".into(),
        format!("{mem}M"),
        // vhost-user-fs needs guest memory that virtiofsd can map.
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
        "-kernel".into(),
        cfg.kernel.clone(),
        "-initrd".into(),
        cfg.initrd.clone(),
        "-append".into(),
        kernel_cmdline(cfg, cmdline_extra),
        "-device".into(),
        "virtio-serial-pci,id=vser".into(),
        "-chardev".into(),
        agent_chardev,
        "-device".into(),
        format!("virtserialport,bus=vser.0,chardev=agent,name={AGENT_PORT_NAME}"),
        "-device".into(),
        "virtio-rng-pci".into(),
        // Free page reporting: the guest hands the pages it frees back to
        // the host (QEMU punches them out of the shared memory), so an idle
        // guest holds only what it uses, not the peak of its past.
        "-device".into(),
        "virtio-balloon-pci,id=balloon,free-page-reporting=on".into(),
    ]);
    a.extend([
        // QEMU's own seccomp filter on top of runvm's: no obsolete system
        // calls, no privilege changes, no new processes, no scheduler or
        // resource-limit changes.
        "-sandbox".into(),
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny".into(),
    ]);
    a
}

/// QEMU's arguments for a container's VM: the root filesystem from
/// virtiofsd, the agent's channel and the console on the supervisor's
/// sockets, the monitor (QMP) for NICs plugged in later, and one NIC per
/// container interface, and one virtio disk per entry of `disk_fds` (in
/// the order of `cfg.disks`): the backing file's descriptors, read-write
/// and read-only.
pub fn qemu_args(cfg: &VmConfig, nics: &[NicArg], disk_fds: &[[i32; 2]]) -> Vec<String> {
    // QEMU connects to the supervisor, which listens before QEMU starts.
    let mut a = machine_args(cfg, &[], format!("socket,id=agent,path={AGENT_SOCKET}"));
    a.extend([
        "-chardev".into(),
        format!("socket,id=vfs,path={VIRTIOFS_SOCKET}"),
        "-device".into(),
        format!("vhost-user-fs-pci,chardev=vfs,tag={ROOTFS_TAG},queue-size=1024"),
        "-chardev".into(),
        format!("socket,id=console,path={CONSOLE_SOCKET}"),
        "-serial".into(),
        "chardev:console".into(),
        "-chardev".into(),
        format!("socket,id=qmp,path={QMP_SOCKET}"),
        "-mon".into(),
        "chardev=qmp,mode=control".into(),
        "-device".into(),
        format!("pcie-pci-bridge,id={NIC_BRIDGE},bus=pcie.0"),
    ]);
    if cfg.container.kernel_modules.is_some() {
        a.extend([
            "-chardev".into(),
            format!("socket,id=vfsmod,path={MODULES_SOCKET}"),
            "-device".into(),
            format!("vhost-user-fs-pci,chardev=vfsmod,tag={MODULES_TAG}"),
        ]);
    }
    for nic in nics {
        a.push("-netdev".into());
        a.push(format!("tap,id=net{},fd={}", nic.slot, nic.tap_fd));
        a.push("-device".into());
        a.push(nic_device(&nic.mac, nic.slot));
    }
    for (n, fds) in disk_fds.iter().enumerate() {
        // QEMU takes the descriptor (it never opens the file by name) and
        // takes its own locks on it too. Guest flushes reach the file
        // (cache=writeback honours them); discard keeps the file sparse.
        let set = n + 1;
        for fd in fds {
            a.extend(["-add-fd".into(), format!("fd={fd},set={set}")]);
        }
        a.extend([
            "-drive".into(),
            format!(
                "if=none,id=disk{n},format=raw,file=/dev/fdset/{set},cache=writeback,discard=unmap"
            ),
            "-device".into(),
            format!(
                "virtio-blk-pci,drive=disk{n},serial={}",
                runvm_contract::VmDisk::serial(n)
            ),
        ]);
    }
    a
}

/// QEMU's arguments for the boot probe (`runvm boot-probe`, the floor of
/// `make bench`): the same machine with no root filesystem and no NIC; the
/// agent, started with `runvm.probe`, prints "runvm-agent: ready" on the
/// console (QEMU's standard output) once it has opened its channel, whose
/// socket QEMU listens on at `agent_socket`, and powers off.
pub fn probe_args(cfg: &VmConfig, agent_socket: &str) -> Vec<String> {
    // The socket is in the caller's temp dir ($TMPDIR), which may hold a
    // comma: QEMU reads one doubled.
    let agent_socket = agent_socket.replace(',', ",,");
    let mut a = machine_args(
        cfg,
        &[PROBE_FLAG],
        format!("socket,id=agent,path={agent_socket},server=on,wait=off"),
    );
    a.extend(["-serial".into(), "stdio".into()]);
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use runvm_protocol::{ContainerSpec, ProcessSpec};

    fn cfg(accel: Accel) -> VmConfig {
        VmConfig {
            accel,
            accel_warning: None,
            vcpus: 2,
            memory_mib: 512,
            qemu: "/usr/bin/qemu-system-x86_64".into(),
            firmware: Some("/usr/share/qemu/qboot.rom".into()),
            virtiofsd: "/runvm/bin/virtiofsd".into(),
            kernel: "/runvm/vmlinuz".into(),
            initrd: "/runvm/initrd.img".into(),
            rootfs: "/rootfs".into(),
            debug: false,
            phases: false,
            created_unix_ms: 0,
            rewritten_unix_ms: 0,
            kernel_append: vec![],
            own_network: true,
            staged_mounts: vec![],
            disks: vec![],
            qemu_uid: 2130706500,
            qemu_gid: 2130706500,
            container: ContainerSpec {
                hostname: None,
                process: ProcessSpec::default(),
                mounts: vec![],
                readonly_root: false,
                ..Default::default()
            },
        }
    }

    fn pair<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn disks_are_given_by_descriptor_with_their_serials() {
        let a = qemu_args(&cfg(Accel::Tcg), &[], &[[7, 8], [9, 10]]);
        assert_eq!(
            pair(&a, "-add-fd"),
            ["fd=7,set=1", "fd=8,set=1", "fd=9,set=2", "fd=10,set=2"]
        );
        let drives = pair(&a, "-drive");
        assert!(drives[1].starts_with("if=none,id=disk1,format=raw,file=/dev/fdset/2,"));
        let devices = pair(&a, "-device");
        assert!(devices.contains(&"virtio-blk-pci,drive=disk0,serial=runvm-disk0"));
        assert!(devices.contains(&"virtio-blk-pci,drive=disk1,serial=runvm-disk1"));
    }

    #[test]
    fn a_comma_in_the_probe_socket_path_stays_in_the_path() {
        let a = probe_args(&cfg(Accel::Tcg), "/tmp/a,server=off/agent.sock");
        assert_eq!(
            pair(&a, "-chardev"),
            ["socket,id=agent,path=/tmp/a,,server=off/agent.sock,server=on,wait=off"]
        );
    }

    #[test]
    fn tcg_and_kvm_pick_matching_cpu_models() {
        let a = qemu_args(&cfg(Accel::Tcg), &[], &[]);
        assert_eq!(pair(&a, "-accel"), ["tcg,thread=multi,tb-size=64"]);
        assert_eq!(pair(&a, "-cpu"), ["max"]);
        let a = qemu_args(&cfg(Accel::Kvm), &[], &[]);
        assert_eq!(pair(&a, "-accel"), ["kvm"]);
        assert_eq!(pair(&a, "-cpu"), ["host"]);
    }

    #[test]
    fn memory_is_shared_memfd_of_the_configured_size() {
        let a = qemu_args(&cfg(Accel::Tcg), &[], &[]);
        assert_eq!(pair(&a, "-m"), ["512M"]);
        assert_eq!(
            pair(&a, "-object"),
            ["memory-backend-memfd,id=mem,size=512M,share=on"]
        );
        assert_eq!(pair(&a, "-machine"), ["q35,memory-backend=mem"]);
    }

    #[test]
    fn each_nic_gets_its_tap_fd_and_mac_on_a_slot_of_the_hot_plug_bridge() {
        let nics = [
            NicArg {
                mac: "02:42:ac:11:00:02".into(),
                tap_fd: 7,
                slot: 1,
            },
            NicArg {
                mac: "02:42:ac:12:00:02".into(),
                tap_fd: 9,
                slot: 2,
            },
        ];
        let a = qemu_args(&cfg(Accel::Tcg), &nics, &[]);
        assert_eq!(
            pair(&a, "-netdev"),
            ["tap,id=net1,fd=7", "tap,id=net2,fd=9"]
        );
        let devs = pair(&a, "-device");
        assert!(devs.contains(&"pcie-pci-bridge,id=nics,bus=pcie.0"));
        assert!(devs.contains(
            &"virtio-net-pci,id=nic2,netdev=net2,mac=02:42:ac:12:00:02,bus=nics,addr=0x2,romfile="
        ));
        assert_eq!(
            pair(&a, "-mon"),
            ["chardev=qmp,mode=control"],
            "QMP, to plug NICs in later"
        );
        assert!(pair(&a, "-chardev").contains(&"socket,id=qmp,path=/run/runvm/qmp.sock"));
        assert!(devs
            .iter()
            .any(|d| d.starts_with("virtserialport") && d.ends_with(AGENT_PORT_NAME)));
    }

    #[test]
    fn the_kernels_modules_get_a_read_only_share_of_their_own_when_it_has_any() {
        let mut c = cfg(Accel::Tcg);
        let a = qemu_args(&c, &[], &[]);
        assert!(!pair(&a, "-device")
            .iter()
            .any(|d| d.contains("runvm-modules")));
        c.container.kernel_modules = Some("6.1.0-57-cloud-amd64".into());
        let a = qemu_args(&c, &[], &[]);
        assert!(pair(&a, "-device").contains(&"vhost-user-fs-pci,chardev=vfsmod,tag=runvm-modules"));
        assert!(pair(&a, "-chardev").contains(&"socket,id=vfsmod,path=/run/runvm/modules.sock"));
        let v = modules_virtiofsd_args(&c, 5);
        assert!(v.contains(&"--readonly".to_string()));
        assert!(v.contains(&"--shared-dir=/runvm/modules".to_string()));
    }

    #[test]
    fn the_guest_gives_freed_memory_back() {
        let a = qemu_args(&cfg(Accel::Tcg), &[], &[]);
        assert!(
            pair(&a, "-device").contains(&"virtio-balloon-pci,id=balloon,free-page-reporting=on")
        );
    }

    #[test]
    fn qemu_runs_its_own_sandbox() {
        let a = qemu_args(&cfg(Accel::Tcg), &[], &[]);
        assert_eq!(
            pair(&a, "-sandbox"),
            ["on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]
        );
    }

    #[test]
    fn quiet_console_unless_debugging() {
        let mut c = cfg(Accel::Tcg);
        assert!(kernel_cmdline(&c, &[]).contains("quiet"));
        c.debug = true;
        assert!(!kernel_cmdline(&c, &[]).contains("quiet"));
    }

    #[test]
    fn the_containers_kernel_parameters_come_after_runvms() {
        let mut c = cfg(Accel::Tcg);
        c.kernel_append = vec!["mitigations=off".into(), "foo.bar=1".into()];
        let line = kernel_cmdline(&c, &[]);
        assert!(line.ends_with(" mitigations=off foo.bar=1"), "{line}");
        assert!(line.starts_with("console=ttyS0 "), "{line}");
    }

    #[test]
    fn a_busy_host_does_not_fail_the_guest_timer_check() {
        let c = kernel_cmdline(&cfg(Accel::Tcg), &[]);
        assert!(c.split(' ').any(|p| p == "no_timer_check"), "{c}");
    }

    #[test]
    fn the_console_goes_to_the_supervisors_socket_never_to_a_file() {
        for debug in [false, true] {
            let mut c = cfg(Accel::Tcg);
            c.debug = debug;
            let a = qemu_args(&c, &[], &[]);
            assert_eq!(pair(&a, "-serial"), ["chardev:console"]);
            assert!(
                pair(&a, "-chardev").contains(&"socket,id=console,path=/run/runvm/console.sock")
            );
            assert!(!a.iter().any(|x| x.contains("file:")), "{a:?}");
        }
    }

    #[test]
    fn virtiofsd_serves_the_rootfs_without_its_own_sandbox() {
        let a = virtiofsd_args(&cfg(Accel::Tcg), 5);
        assert!(a.contains(&"--fd=5".to_string()));
        assert!(a.contains(&"--shared-dir=/rootfs".to_string()));
        assert!(a.contains(&"--sandbox=none".to_string()));
    }

    #[test]
    fn virtiofsd_makes_device_nodes_only_for_a_container_that_may() {
        let mut c = cfg(Accel::Tcg);
        let caps = |names: &[&str]| runvm_protocol::Capabilities {
            bounding: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        c.container.process.capabilities = None;
        assert!(!virtiofsd_args(&c, 5)
            .iter()
            .any(|a| a.starts_with("--modcaps")));
        c.container.process.capabilities = Some(caps(&["CAP_CHOWN", "CAP_MKNOD"]));
        assert!(!virtiofsd_args(&c, 5)
            .iter()
            .any(|a| a.starts_with("--modcaps")));
        c.container.process.capabilities = Some(caps(&["CAP_CHOWN"]));
        assert!(virtiofsd_args(&c, 5).contains(&"--modcaps=-mknod".to_string()));
        // A --device the agent makes outside /dev, on the shared root.
        c.container.devices.push(runvm_protocol::GuestDevice {
            path: "/fuse".into(),
            block: false,
            major: 10,
            minor: 229,
            mode: 0o666,
            uid: 0,
            gid: 0,
        });
        assert!(!virtiofsd_args(&c, 5)
            .iter()
            .any(|a| a.starts_with("--modcaps")));
    }

    #[test]
    fn the_probe_boots_the_containers_machine_without_root_or_nics() {
        let c = cfg(Accel::Tcg);
        let vm = qemu_args(&c, &[], &[]);
        let probe = probe_args(&c, "/tmp/p/agent.sock");
        for flag in [
            "-machine", "-bios", "-accel", "-cpu", "-smp", "-m", "-object", "-kernel", "-initrd",
            "-sandbox",
        ] {
            assert_eq!(pair(&probe, flag), pair(&vm, flag), "{flag}");
        }
        let append = pair(&probe, "-append");
        assert_eq!(
            append,
            [format!("{} {PROBE_FLAG}", kernel_cmdline(&c, &[]))]
        );
        assert_eq!(
            pair(&probe, "-chardev"),
            ["socket,id=agent,path=/tmp/p/agent.sock,server=on,wait=off"]
        );
        assert_eq!(pair(&probe, "-serial"), ["stdio"]);
        assert!(!probe
            .iter()
            .any(|x| x.contains("vhost-user-fs") || x.contains("netdev")));
    }
}
