//! The differential table under Podman: `podman run --runtime runc`
//! against `podman run --runtime runvm` (registered by `runvm
//! podman-register`, which `make install` runs), rootful, with the same
//! scenarios as under Docker but those that only Docker's CLI has.

use runvm_e2e::differential::{run_table, Engine};
use runvm_e2e::*;

/// The test image in Podman's store, the one Docker has (loaded again when
/// Docker's was rebuilt).
fn load_image() {
    let docker_id = docker(&["image", "inspect", "-f", "{{.Id}}", IMAGE], None);
    docker_id.assert_code(0, "the test image in Docker");
    let want = docker_id
        .stdout_str()
        .trim()
        .trim_start_matches("sha256:")
        .to_string();
    let have = run_cmd_quiet(
        "podman",
        &["image", "inspect", "-f", "{{.Id}}", IMAGE],
        None,
        COMMAND_TIMEOUT,
    );
    if have.code == 0 && have.stdout_str().trim() == want {
        return;
    }
    host_sh(&format!("docker save {IMAGE} | podman load -q"))
        .assert_code(0, "loading the test image into Podman");
}

#[e2e_test]
fn every_scenario_as_under_runc_with_podman() {
    let podman = run_cmd(
        "podman",
        &["info", "--format", "{{json .Host.OCIRuntime.Name}}"],
        None,
        COMMAND_TIMEOUT,
    );
    podman.assert_code(0, "podman info (run `make install`, which installs Podman)");
    load_image();
    // conmon leaves an `oom` file in its working directory when a
    // container is OOM-killed: not in the source tree.
    let dir = tempfile::tempdir().expect("tempdir");
    std::env::set_current_dir(dir.path()).expect("chdir");
    run_table(&scenarios::podman_scenarios(), Engine::Podman);
}
