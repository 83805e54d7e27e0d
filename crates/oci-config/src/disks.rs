//! `RUNVM_DISKS` and `RUNVM_ROOTDISK`: the container's block devices.
//!
//! `RUNVM_DISKS='<src>,<dst>,<fs>[,<size>][;…]'`: the file `<src>` inside
//! the container (its image or a volume) backs a virtio block device that
//! the guest mounts at `<dst>`; `<fs>` is `ext4`, `xfs` or `raw` (no file
//! system: `<dst>` is then the device node the workload gets, under
//! `/dev`). A missing file is made `<size>` big (sparse), formatted, and
//! filled with what the image has at `<dst>`.
//!
//! `RUNVM_ROOTDISK='<size>'` or `'<src>,<size>'`: the guest's root is an
//! ext4 disk, filled from the image on first start; its backing file is
//! [`DEFAULT_ROOTDISK`] in the container's writable layer unless `<src>`
//! puts it elsewhere (on a volume, say).
//!
//! Only the syntax is checked here (no file is touched): every entry is
//! checked before anything is made, so a bad entry creates nothing.

use runvm_contract::VmDisk;
use runvm_protocol::DiskFs;

/// Where a root disk's backing file is, unless `RUNVM_ROOTDISK` says.
pub const DEFAULT_ROOTDISK: &str = "/disks/rootdisk.img";

/// The most disks a container may have (each is a PCI device).
pub const MAX_DISKS: usize = 16;

/// Disks are smaller than 16 TiB, ext4's largest file on the host (16 TiB
/// less 4 KiB).
pub const MAX_SIZE: u64 = (16 << 40) - (1 << 20);

/// Kernel filesystems of the container's own side (the supervisor's): no
/// backing file lives there and no disk is mounted over the guest's.
const KERNEL_DIRS: &[&str] = &runvm_protocol::KERNEL_FS_MOUNTPOINTS;

/// The smallest file system `fs` can be made on.
pub fn min_size(fs: DiskFs) -> u64 {
    match fs {
        // mkfs.xfs (xfsprogs 5.19 and later) refuses smaller ones.
        DiskFs::Xfs => 300 << 20,
        DiskFs::Ext4 => 8 << 20,
        DiskFs::Raw => 1 << 20,
    }
}

/// Parses `RUNVM_DISKS`. The error names the entry and what to change.
pub fn parse_disks(value: &str) -> Result<Vec<VmDisk>, String> {
    let mut disks: Vec<VmDisk> = Vec::new();
    let entries = value.split(';').map(str::trim).filter(|e| !e.is_empty());
    for (i, entry) in entries.enumerate() {
        let at = |why: String| format!("entry {} ({entry:?}): {why}", i + 1);
        let disk = parse_entry(entry).map_err(at)?;
        if let Some(d) = disks.iter().find(|d| d.source == disk.source) {
            return Err(at(format!(
                "{} backs another disk already (mounted at {}); give each disk a file of its own",
                d.source, d.destination
            )));
        }
        if disks.iter().any(|d| d.destination == disk.destination) {
            return Err(at(format!(
                "another disk is mounted at {} already; give each disk its own <dst>",
                disk.destination
            )));
        }
        disks.push(disk);
    }
    if disks.len() > MAX_DISKS {
        return Err(format!(
            "{} disks asked for; a container may have at most {MAX_DISKS}",
            disks.len()
        ));
    }
    Ok(disks)
}

fn parse_entry(entry: &str) -> Result<VmDisk, String> {
    let fields: Vec<&str> = entry.split(',').map(str::trim).collect();
    let [source, destination, fs, rest @ ..] = fields.as_slice() else {
        return Err("give <src>,<dst>,<fs>[,<size>], e.g. /disks/data.img,/data,ext4,1g".into());
    };
    let size = match rest {
        [] => None,
        [size] => Some(parse_size(size)?),
        _ => return Err("too many fields: give <src>,<dst>,<fs>[,<size>]".into()),
    };
    let fs = match *fs {
        "ext4" => DiskFs::Ext4,
        "xfs" => DiskFs::Xfs,
        "raw" => DiskFs::Raw,
        other => {
            return Err(format!(
                "unknown file system {other:?}: use ext4, xfs or raw"
            ))
        }
    };
    let source = container_path("<src>", source)?;
    let destination = container_path("<dst>", destination)?;
    if destination == "/" {
        return Err(
            "<dst> is the root directory: use RUNVM_ROOTDISK for a disk as the guest's root".into(),
        );
    }
    let under_dev = destination.starts_with("/dev/");
    match fs {
        DiskFs::Raw if !under_dev => {
            return Err(format!(
            "<dst> {destination} is not under /dev: a raw disk is a device node, such as /dev/data"
        ))
        }
        DiskFs::Raw if destination["/dev/".len()..].contains('/') || destination == "/dev/pts" => {
            return Err(format!(
                "<dst> {destination} must be a name directly in /dev, such as /dev/data"
            ))
        }
        DiskFs::Raw => {}
        _ if in_kernel_dir(&destination) => {
            return Err(format!(
                "<dst> {destination} is in a kernel file system ({}): mount the disk elsewhere",
                KERNEL_DIRS.join(", ")
            ))
        }
        _ => {}
    }
    if let Some(size) = size {
        check_size(fs, size)?;
    }
    Ok(VmDisk {
        source,
        destination,
        fs,
        size,
    })
}

/// Parses `RUNVM_ROOTDISK`: `<size>`, `<src>,<size>` or `<src>` (an
/// existing file).
pub fn parse_rootdisk(value: &str) -> Result<VmDisk, String> {
    let fields: Vec<&str> = value.split(',').map(str::trim).collect();
    let (source, size) = match fields.as_slice() {
        [one] if one.starts_with('/') => (container_path("<src>", one)?, None),
        [size] => (DEFAULT_ROOTDISK.to_owned(), Some(parse_size(size)?)),
        [source, size] => (container_path("<src>", source)?, Some(parse_size(size)?)),
        _ => {
            return Err(
                "give <size> (such as 2g) or <src>,<size> (such as /disks/root.img,2g)".into(),
            )
        }
    };
    if let Some(size) = size {
        check_size(DiskFs::Ext4, size)?;
    }
    Ok(VmDisk {
        source,
        destination: "/".into(),
        fs: DiskFs::Ext4,
        size,
    })
}

fn check_size(fs: DiskFs, size: u64) -> Result<(), String> {
    let min = min_size(fs);
    if size < min {
        return Err(format!(
            "{} is too small for {}: give at least {}m",
            human(size),
            fs.name(),
            min >> 20
        ));
    }
    if size > MAX_SIZE {
        return Err(format!(
            "{} is not less than 16t: give a smaller size",
            human(size)
        ));
    }
    Ok(())
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}g", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}m", b >> 20),
        b => format!("{b} bytes"),
    }
}

fn in_kernel_dir(path: &str) -> bool {
    KERNEL_DIRS
        .iter()
        .any(|d| path == *d || path.strip_prefix(d).is_some_and(|r| r.starts_with('/')))
}

/// An absolute path inside the container, made canonical (`//` and `.`
/// dropped); `..`, a relative path or a kernel file system are refused
/// (`what` names the field).
fn container_path(what: &str, path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!(
            "{what} {path:?} is not an absolute path inside the container: start it with /"
        ));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(format!(
                    "{what} {path:?} has a `..`: give a path inside the container without one"
                ))
            }
            p => parts.push(p),
        }
    }
    if path.len() > 1024 {
        return Err(format!("{what} is too long: give a shorter path"));
    }
    if path.chars().any(char::is_control) {
        return Err(format!(
            "{what} {path:?} has a control character: give a plain path"
        ));
    }
    let clean = format!("/{}", parts.join("/"));
    if what == "<src>" {
        if clean == "/" {
            return Err(format!(
                "{what} is the root directory: give a file, such as /disks/data.img"
            ));
        }
        if in_kernel_dir(&clean) {
            return Err(format!(
                "{what} {clean} is in a kernel file system ({}), outside the container's files: put the file in the image or on a volume, such as /disks/data.img",
                KERNEL_DIRS.join(", ")
            ));
        }
    }
    Ok(clean)
}

/// Parses a disk size: a whole number with `k`, `m`, `g` or `t` (powers of
/// 1024; `kb`, `mib`, … too), or bytes with no suffix.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let lower = s.trim().to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let shift = match &lower[digits.len()..] {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(format!(
            "size {s:?} is not a size: give a whole number with k, m, g or t, such as 512m or 10g"
        ))
        }
    };
    let n: u64 = digits.parse().map_err(|_| {
        format!(
            "size {s:?} is not a size: give a whole number with k, m, g or t, such as 512m or 10g"
        )
    })?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("size {s:?} is not less than 16t: give a smaller size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_with_and_without_size() {
        let d = parse_disks(
            " /disks/a.img,/data,ext4,1g ; /v/b.img,/srv//x/,xfs;/disks/r,/dev/blk,raw,64m;",
        )
        .unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!(
            d[0],
            VmDisk {
                source: "/disks/a.img".into(),
                destination: "/data".into(),
                fs: DiskFs::Ext4,
                size: Some(1 << 30)
            }
        );
        assert_eq!(d[1].destination, "/srv/x");
        assert_eq!((d[1].fs, d[1].size), (DiskFs::Xfs, None));
        assert_eq!((d[2].fs, d[2].size), (DiskFs::Raw, Some(64 << 20)));
        assert!(parse_disks("").unwrap().is_empty());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("1t"), Ok(1 << 40));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("2MiB"), Ok(2 << 20));
        for bad in ["10Q", "", "m", "1.5g", "-1g", "g10"] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains("such as 512m"), "{bad}: {e}");
        }
        assert!(parse_size("99999999999t").unwrap_err().contains("16t"));
        assert!(parse_disks("/d/a,/x,ext4,15t").is_ok());
    }

    #[test]
    fn bad_entries_name_the_entry_and_the_fix() {
        for (spec, needle) in [
            ("/disks/a,/data,zfs,1g", "unknown file system \"zfs\""),
            ("/disks/a,/data,ext4,10Q", "size \"10Q\""),
            (
                "/disks/a,data,ext4,1g",
                "<dst> \"data\" is not an absolute path",
            ),
            (
                "disks/a,/data,ext4,1g",
                "<src> \"disks/a\" is not an absolute",
            ),
            ("/disks/../etc/a,/data,ext4,1g", "has a `..`"),
            ("/proc/self/root/x,/data,ext4,1g", "kernel file system"),
            ("/disks/a,/proc/x,ext4,1g", "kernel file system"),
            ("/disks/a,/,ext4,1g", "RUNVM_ROOTDISK"),
            ("/disks/a,/data,xfs,100m", "at least 300m"),
            ("/disks/a,/data,raw,1g", "not under /dev"),
            ("/disks/a,/data", "<src>,<dst>,<fs>"),
            ("/disks/a,/data,ext4,1g,x", "too many fields"),
            ("/disks/a,/data,ext4,32t", "16t"),
            ("/disks/a,/data,ext4,16t", "not less than 16t"),
            ("/disks/a\nb,/data,ext4,1g", "control character"),
        ] {
            let e = parse_disks(&format!("/disks/ok,/ok,ext4;{spec}")).unwrap_err();
            assert!(e.starts_with("entry 2 ("), "{spec}: {e}");
            assert!(e.contains(needle), "{spec}: {e}");
            assert!(!e.contains('\n'));
        }
        let e = parse_disks("/disks/a,/x,ext4;/disks/a,/y,ext4").unwrap_err();
        assert!(e.contains("backs another disk"), "{e}");
        let e = parse_disks("/disks/a,/x,ext4;/disks/b,/x/,ext4").unwrap_err();
        assert!(e.contains("mounted at /x already"), "{e}");
        let many: Vec<String> = (0..17).map(|i| format!("/d/{i},/m/{i},ext4")).collect();
        assert!(parse_disks(&many.join(";"))
            .unwrap_err()
            .contains("at most 16"));
    }

    #[test]
    fn rootdisk_forms() {
        let d = parse_rootdisk("2g").unwrap();
        assert_eq!(
            (d.source.as_str(), d.destination.as_str(), d.size),
            (DEFAULT_ROOTDISK, "/", Some(2 << 30))
        );
        let d = parse_rootdisk("/vol/root.img,1g").unwrap();
        assert_eq!(
            (d.source.as_str(), d.size),
            ("/vol/root.img", Some(1 << 30))
        );
        let d = parse_rootdisk("/vol/root.img").unwrap();
        assert_eq!(d.size, None);
        assert!(parse_rootdisk("lots").unwrap_err().contains("not a size"));
        assert!(parse_rootdisk("a,b,c")
            .unwrap_err()
            .contains("<src>,<size>"));
        assert!(parse_rootdisk("1m").unwrap_err().contains("at least 8m"));
    }
}
