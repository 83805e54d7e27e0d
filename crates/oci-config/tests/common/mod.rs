//! Fixtures shared by the rewrite's test files.

use runvm_config::rewrite::{HostDevice, HostEntry, KernelModules};
use runvm_config::HostLayout;
use runvm_contract::Accel;
use serde_json::Value;

/// A config.json Docker wrote, from `tests/fixtures`.
pub fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The host as a typical install lays it out: runvm under /usr/local,
/// /usr bound in, /lib a symlink, /dev/kvm present, 2 CPUs and 4 GiB.
pub fn host() -> HostLayout {
    HostLayout {
        new_root: "/run/bundle/runvm/root".into(),
        host_entries: vec![
            HostEntry::Bind("/usr".into()),
            HostEntry::Symlink {
                path: "/lib".into(),
                target: "usr/lib".into(),
            },
        ],
        supervisor: "/usr/local/lib/runvm/runvm-supervisor".into(),
        virtiofsd: "/usr/local/lib/runvm/virtiofsd".into(),
        kernel: "/var/lib/runvm/kernel/boot/vmlinuz".into(),
        initrd: "/var/lib/runvm/cache/initramfs.img".into(),
        modules: Some(KernelModules {
            dir: "/var/lib/runvm/kernel/6.1.0-57-cloud-amd64/lib/modules/6.1.0-57-cloud-amd64"
                .into(),
            version: "6.1.0-57-cloud-amd64".into(),
        }),
        qemu: "/usr/bin/qemu-system-x86_64".into(),
        firmware: Some("/usr/share/qemu/qboot.rom".into()),
        devices: vec![HostDevice {
            path: "/dev/kvm".into(),
            major: 10,
            minor: 232,
        }],
        host_cpus: 2,
        host_memory_mib: 4096,
        qemu_ids: (2130706500, 2130706500),
        accel: Accel::Tcg,
        accel_warning: None,
        created_unix_ms: 0,
        bound_shm_bytes: None,
    }
}
