//! An image with no shell and no libc: only a static binary.

use runvm_e2e::*;

/// Removes the test image when dropped.
struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rmi", "-f", &self.0])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Imports an image whose only file is `/echo`, a copy of the test image's
/// static busybox (busybox picks the applet from argv[0], so the file's name
/// is the applet's), with `CMD ["/echo", "scratch-ok"]`.
fn build_scratch_image() -> Image {
    let image = Image(format!("{}:{}", unique_name("scratch"), "latest"));
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    std::fs::create_dir(&root).expect("mkdir root");
    let holder = Container::new("scratch-src");
    docker(&["create", "--name", &holder.name, IMAGE, "true"], None)
        .assert_code(0, "docker create (to copy busybox out)");
    let dest = root.join("echo");
    let dest = dest.to_str().expect("utf-8 temp path");
    docker(
        &["cp", "-L", &format!("{}:/bin/busybox", holder.name), dest],
        None,
    )
    .assert_code(0, "docker cp busybox");
    let tar = dir.path().join("rootfs.tar");
    let tar = tar.to_str().expect("utf-8 temp path");
    run_cmd(
        "tar",
        &[
            "-C",
            root.to_str().expect("utf-8"),
            "--owner=0",
            "--group=0",
            "-cf",
            tar,
            "echo",
        ],
        None,
        COMMAND_TIMEOUT,
    )
    .assert_code(0, "tar");
    docker(
        &[
            "import",
            "-c",
            r#"CMD ["/echo","scratch-ok"]"#,
            tar,
            &image.0,
        ],
        None,
    )
    .assert_code(0, "docker import");
    image
}

#[e2e_test]
fn image_without_shell_or_libc() {
    let image = build_scratch_image();
    let (runc, runvm) = run_both(&[], &[&image.0], None);
    assert_same(&runc, &runvm, "scratch image, CMD [/echo, scratch-ok]");
    assert_eq!(runvm.stdout, b"scratch-ok\n", "{}", runvm.describe());
    assert_eq!(runvm.code, 0);
}
