//! A kernel shipped inside the image boots the container's VM, unless
//! `RUNVM_KERNEL` names one of the store; an image without a usable kernel
//! (none, an unknown distribution, a hostile one) boots the default kernel.
//!
//! `runvm-test/kernel-debian` (scripts/build-test-images.sh) is the busybox
//! image plus a Debian 6.12 cloud kernel package's `/boot/vmlinuz-<ver>`
//! and `/lib/modules/<ver>` (xz-compressed modules), a kernel other than
//! the store's default 6.1 one.

use std::time::Duration;

use runvm_e2e::*;

const KERNEL_IMAGE: &str = "runvm-test/kernel-debian";

/// The version of the kernel in [`KERNEL_IMAGE`] (its label).
fn image_kernel_version() -> String {
    let r = docker(
        &[
            "image",
            "inspect",
            "-f",
            "{{index .Config.Labels \"io.runvm.kernel\"}}",
            KERNEL_IMAGE,
        ],
        None,
    );
    let version = r.stdout_str().trim().to_string();
    assert!(
        r.code == 0 && !version.is_empty() && version != "<no value>",
        "the test image {KERNEL_IMAGE} is missing or has no io.runvm.kernel label: run `make images`; {}",
        r.describe()
    );
    version
}

/// The store's default kernel (marked `*` by `runvm kernel list`): its
/// name and version.
fn default_kernel() -> (String, String) {
    let list = run_cmd(&runvm_binary(), &["kernel", "list"], None, COMMAND_TIMEOUT);
    list.assert_code(0, "runvm kernel list");
    list.stdout_str()
        .lines()
        .find(|l| l.trim_end().ends_with('*'))
        .map(|l| {
            let mut f = l.split_whitespace();
            (
                f.next().unwrap_or_default().to_owned(),
                f.next().unwrap_or_default().to_owned(),
            )
        })
        .unwrap_or_else(|| panic!("no default kernel: {}", list.describe()))
}

/// Removes a test's image, whatever happened.
struct Image(&'static str);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rmi", "-f", self.0])
            .output();
    }
}

#[e2e_test]
fn the_images_own_kernel_boots_and_its_modules_load() {
    let version = image_kernel_version();
    let (_, default) = default_kernel();
    assert_ne!(
        version, default,
        "the test image's kernel is the default one"
    );
    let _slot = vm_slots(1);
    let c = Container::run_detached(
        "image-kernel",
        "runvm",
        &[
            "--cap-add",
            "SYS_MODULE",
            "--cap-add",
            "NET_ADMIN",
            KERNEL_IMAGE,
            "sh",
            "-c",
            "v=$(uname -r); echo $v; \
             test -f /lib/modules/$v/kernel/drivers/net/dummy.ko.xz && echo the-images-modules; \
             modprobe dummy && ip link add d0 type dummy && echo dummy-loaded; \
             echo up; sleep 600",
        ],
    );
    let logs = c.wait_for_log("up", Duration::from_secs(120));
    assert_eq!(
        logs.stdout_str(),
        format!("{version}\nthe-images-modules\ndummy-loaded\nup\n"),
        "{}",
        logs.describe()
    );
    // The modules are the image's own files: no second virtiofsd serves
    // the store's.
    let vfs = c.host_pids_of("virtiofsd");
    assert_eq!(
        vfs.len(),
        1,
        "one virtiofsd, for the image's files: {vfs:?}"
    );
}

#[e2e_test]
fn runvm_kernel_picks_the_stores_kernel_over_the_images() {
    let (name, default) = default_kernel();
    let env = format!("RUNVM_KERNEL={name}");
    let r = run_one(
        "runvm",
        &["-e", &env],
        &[
            KERNEL_IMAGE,
            "sh",
            "-c",
            "v=$(uname -r); echo $v; test -f /lib/modules/$v/modules.dep && echo modules-there",
        ],
        None,
    );
    r.assert_code(0, "RUNVM_KERNEL with an image that has a kernel");
    assert_eq!(r.stdout_str(), format!("{default}\nmodules-there\n"));
}

#[e2e_test]
fn images_without_a_kernel_boot_the_default_one() {
    let (_, default) = default_kernel();
    let r = run_one("runvm", &[], &[IMAGE, "uname", "-r"], None);
    r.assert_code(0, "busybox");
    assert_eq!(r.stdout_str(), format!("{default}\n"), "{}", r.describe());

    let tag = "runvm-test/unknown-os";
    build_image(
        tag,
        &format!(
            "FROM {IMAGE}\nRUN printf 'NAME=\"Frobnix\"\\nID=frobnix\\nVERSION_ID=0.1\\n' > /etc/os-release\n"
        ),
    );
    let _image = Image(tag);
    let r = run_one(
        "runvm",
        &[],
        &[tag, "sh", "-c", "grep ^ID= /etc/os-release; uname -r"],
        None,
    );
    r.assert_code(0, "an unknown distribution");
    assert_eq!(
        r.stdout_str(),
        format!("ID=frobnix\n{default}\n"),
        "{}",
        r.describe()
    );
}

/// Removes the host directory the hostile image points at.
struct HostDir(String);

impl Drop for HostDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An image whose kernel files point out of the image, at a real kernel
/// of the right version on the host (if runvm followed any of them, the VM
/// would boot it), or are garbage, too large or a FIFO: the default kernel
/// boots, and nothing blocks.
#[e2e_test]
fn a_hostile_image_kernel_boots_the_default_one() {
    let version = image_kernel_version();
    let (_, default) = default_kernel();
    // A real kernel of the image's version, outside the image.
    let host_dir = format!("/tmp/runvm-e2e-host-kernel-{}", std::process::id());
    let _host_dir = HostDir(host_dir.clone());
    std::fs::create_dir_all(&host_dir).unwrap();
    let holder = Container::new("kernel-source");
    docker(&["create", "--name", &holder.name, KERNEL_IMAGE], None).assert_code(0, "docker create");
    let host_kernel = format!("{host_dir}/vmlinuz-{version}");
    docker(
        &[
            "cp",
            &format!("{}:/boot/vmlinuz-{version}", holder.name),
            &host_kernel,
        ],
        None,
    )
    .assert_code(0, "docker cp");
    drop(holder);

    let tag = "runvm-test/hostile-kernel";
    let flavor = version.rsplit('-').next().unwrap();
    build_image(
        tag,
        &format!(
            "FROM {KERNEL_IMAGE}\n\
             RUN v={version} && rm /boot/vmlinuz-$v \
             && ln -s {host_kernel} /lib/modules/$v/vmlinuz \
             && ln -s ../../../../../../../..{host_kernel} /boot/vmlinuz-$v \
             && ln -s /proc/self/root{host_kernel} /boot/vmlinuz-{flavor} \
             && for k in garbage huge fifo; do mkdir /lib/modules/6.99.0-$k \
             && cp /lib/modules/$v/modules.dep /lib/modules/6.99.0-$k/; done \
             && head -c 1000000 /dev/urandom > /boot/vmlinuz-6.99.0-garbage \
             && truncate -s 129M /boot/vmlinuz-6.99.0-huge \
             && mkfifo /boot/vmlinuz-6.99.0-fifo\n"
        ),
    );
    let _image = Image(tag);
    let r = run_one("runvm", &[], &[tag, "uname", "-r"], None);
    r.assert_code(0, "a hostile image kernel");
    assert_eq!(r.stdout_str(), format!("{default}\n"), "{}", r.describe());
}
