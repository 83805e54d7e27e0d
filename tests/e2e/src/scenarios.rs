//! The differential table: every common `docker run` option (and the
//! `docker` commands that act on a running container), each as a few
//! scenarios that must give the same stdout, stderr, exit code and host
//! files under runc and runvm, or differ only as README.md documents.
//! The runner is in `differential.rs`.

use crate::differential::{host, run, sh, Scenario, Side};

/// The whole table.
pub fn scenarios() -> Vec<Scenario> {
    let mut all = Vec::new();
    all.extend(users_and_groups());
    all.extend(process_setup());
    all.extend(names());
    all.extend(tmpfs());
    all.extend(volumes_and_binds());
    all.extend(root_and_limits());
    all.extend(resources());
    all.extend(kernel_settings());
    all.extend(privileges());
    all.extend(devices_and_namespaces());
    all.extend(lifecycle());
    all.extend(logs());
    all.extend(container_files());
    all.extend(exec());
    all
}

fn users_and_groups() -> Vec<Scenario> {
    vec![
        run("user_uid", "-u", &["-u", "1000"], &["id"]),
        run("user_uid_gid", "-u", &["-u", "1000:100"], &["id"]),
        run("user_name", "-u", &["-u", "user"], &["id"]),
        run("user_name_group", "-u", &["-u", "user:users"], &["id"]),
        run(
            "user_nobody",
            "-u",
            &["-u", "nobody"],
            &["sh", "-c", "id; echo $HOME"],
        ),
        run(
            "user_unknown_uid",
            "-u",
            &["-u", "4242:4343"],
            &["sh", "-c", "id; echo $HOME"],
        ),
        run("user_unknown_name", "-u", &["-u", "nosuchuser"], &["id"])
            .engine_refuses()
            .normalise(runtime_error),
        run(
            "user_unknown_group",
            "-u",
            &["-u", "1000:nosuchgroup"],
            &["id"],
        )
        .engine_refuses()
        .normalise(runtime_error),
        sh(
            "user_writes_its_home",
            "-u",
            &["-u", "1000"],
            "touch ~/x && ls -ln ~ | sed 's/ [A-Z][a-z][a-z] .*:.. / <date> /'",
        ),
        run(
            "group_add_number",
            "--group-add",
            &["--group-add", "100"],
            &["id"],
        ),
        run(
            "group_add_name",
            "--group-add",
            &["-u", "1000", "--group-add", "users"],
            &["id"],
        ),
        run(
            "group_add_several",
            "--group-add",
            &["--group-add", "100", "--group-add", "4000"],
            &["id"],
        ),
        run(
            "group_add_unknown",
            "--group-add",
            &["--group-add", "nosuchgroup"],
            &["id"],
        )
        .engine_refuses()
        .normalise(runtime_error),
    ]
}

fn process_setup() -> Vec<Scenario> {
    vec![
        run("workdir_existing", "-w", &["-w", "/tmp"], &["pwd"]),
        sh(
            "workdir_new",
            "-w",
            &["-w", "/new/dir"],
            "pwd; ls -ld . | cut -c1-10",
        ),
        run("workdir_relative", "-w", &["-w", "rel"], &["pwd"]).engine_refuses(),
        sh(
            "workdir_new_as_user",
            "-w",
            &["-u", "1000", "-w", "/made/by"],
            "pwd; stat -c '%u %a' .",
        ),
        sh(
            "env_set",
            "-e",
            &["-e", "A=1", "-e", "B=two words"],
            "echo \"$A|$B\"",
        ),
        sh(
            "env_empty_value",
            "-e",
            &["-e", "EMPTY="],
            "echo \"[${EMPTY-unset}]\"",
        ),
        sh(
            "env_unset_on_host",
            "-e",
            &["-e", "RUNVM_NOT_ON_THE_HOST"],
            "echo \"[${RUNVM_NOT_ON_THE_HOST-unset}]\"",
        ),
        sh(
            "env_path_override",
            "-e",
            &["-e", "PATH=/bin"],
            "echo $PATH; command -v ls",
        ),
        run("env_whole", "-e", &["-h", "h", "-e", "X=1"], &["env"]),
        run(
            "env_file",
            "--env-file",
            &["-h", "h", "--env-file", "{dir}/env.list"],
            &["env"],
        ),
        run(
            "env_file_missing",
            "--env-file",
            &["--env-file", "/nonexistent/env.list"],
            &["env"],
        )
        .engine_refuses(),
        run(
            "entrypoint",
            "--entrypoint",
            &["--entrypoint", "echo"],
            &["hi", "there"],
        ),
        run(
            "entrypoint_empty",
            "--entrypoint",
            &["--entrypoint", ""],
            &["echo", "hi"],
        ),
        run(
            "entrypoint_missing",
            "--entrypoint",
            &["--entrypoint", "/nope"],
            &[],
        )
        .normalise(runtime_error),
        run("command_not_found", "command", &[], &["nosuchcommand"]).normalise(runtime_error),
        run("command_not_executable", "command", &[], &["/etc/passwd"]).normalise(runtime_error),
        run("command_is_a_directory", "command", &[], &["/tmp"]).normalise(runtime_error),
        sh("exit_code", "command", &[], "exit 42"),
        sh("killed_by_signal", "command", &[], "kill -KILL $$"),
        sh(
            "stderr_and_stdout",
            "command",
            &[],
            "echo out; echo err >&2; echo out2",
        ),
        sh(
            "init_is_pid_1",
            "--init",
            &["--init"],
            "tr '\\0' ' ' </proc/1/cmdline; echo; [ $$ -gt 1 ] && echo the shell is not pid 1",
        ),
        sh("init_exit_code", "--init", &["--init"], "exit 3"),
        sh(
            "init_reaps_orphans",
            "--init",
            &["--init"],
            "(sleep 0.2 &) ; sleep 1; ps -o stat,comm | grep -c Z",
        ),
        sh("no_init_pid_1", "--init", &[], "echo $$"),
    ]
}

fn names() -> Vec<Scenario> {
    vec![
        run("hostname", "-h", &["-h", "myhost"], &["hostname"]),
        run(
            "hostname_etc",
            "-h",
            &["-h", "myhost"],
            &["cat", "/etc/hostname"],
        ),
        run(
            "hostname_dotted",
            "-h",
            &["-h", "a.b.example"],
            &["hostname"],
        ),
        sh(
            "domainname",
            "--domainname",
            &["-h", "h", "--domainname", "example.org"],
            "hostname; cat /proc/sys/kernel/domainname",
        ),
        run(
            "hosts_file",
            "--add-host",
            &["-h", "h", "--add-host", "db:10.1.2.3"],
            &["cat", "/etc/hosts"],
        )
        .normalise(ipv4),
        run(
            "dns_option",
            "--dns",
            &["--dns", "192.0.2.53"],
            &["cat", "/etc/resolv.conf"],
        ),
    ]
}

fn tmpfs() -> Vec<Scenario> {
    vec![
        sh(
            "tmpfs_default",
            "--tmpfs",
            &["--tmpfs", "/scratch"],
            "grep ' /scratch ' /proc/mounts; stat -c %a /scratch",
        ),
        sh(
            "tmpfs_size",
            "--tmpfs",
            &["--tmpfs", "/scratch:size=1m"],
            "grep ' /scratch ' /proc/mounts; dd if=/dev/zero of=/scratch/f bs=64k count=32 2>&1 | grep -v records",
        ),
        sh(
            "tmpfs_mode",
            "--tmpfs",
            &["--tmpfs", "/scratch:mode=0700"],
            "stat -c %a /scratch",
        ),
        sh(
            "tmpfs_noexec",
            "--tmpfs",
            &["--tmpfs", "/scratch"],
            "cp /bin/busybox /scratch/bb; /scratch/bb true; echo $?",
        ),
        sh(
            "tmpfs_exec",
            "--tmpfs",
            &["--tmpfs", "/scratch:exec"],
            "cp /bin/busybox /scratch/bb && /scratch/bb true && echo ran",
        ),
        sh(
            "tmpfs_over_image_dir",
            "--tmpfs",
            &["--tmpfs", "/home"],
            // Podman's --tmpfs copies the image's files up (tmpcopyup);
            // Docker's starts empty.
            "ls -a /home; stat -c '%n %a %u:%g' /home /home/user",
        ),
        sh(
            "tmpfs_read_only_over_image_dir",
            "--tmpfs",
            &["--tmpfs", "/home:ro"],
            "ls -a /home; stat -c '%n %a %u:%g' /home; touch /home/x",
        ),
        sh(
            "mount_tmpfs",
            "--mount",
            &["--mount", "type=tmpfs,destination=/t,tmpfs-size=65536,tmpfs-mode=1770"],
            "grep ' /t ' /proc/mounts; stat -c %a /t",
        ),
    ]
}

fn volumes_and_binds() -> Vec<Scenario> {
    vec![
        sh(
            "volume_named",
            "-v",
            &["-v", "{vol}:/v"],
            "echo hi > /v/f; cat /v/f; ls -la /v | grep -c f$",
        ),
        sh(
            "volume_copies_image_dir",
            "-v",
            &["-v", "{vol}:/home"],
            "find /home | sort; stat -c '%n %u:%g %a' /home/user",
        ),
        sh(
            "volume_nocopy",
            "--mount",
            &["--mount", "type=volume,src={vol},dst=/home,volume-nocopy"],
            "ls -a /home",
        ),
        sh(
            "volume_read_only",
            "-v",
            &["-v", "{vol}:/v:ro"],
            "touch /v/x; echo $?",
        ),
        sh(
            "volume_anonymous",
            "-v",
            &["-v", "/anon"],
            "echo x > /anon/f && cat /anon/f",
        ),
        sh(
            "mount_volume",
            "--mount",
            &["--mount", "type=volume,src={vol},dst=/v"],
            "echo hi > /v/f && cat /v/f",
        ),
        sh(
            "bind_dir",
            "-v",
            &["-v", "{dir}:/d"],
            "cat /d/file.txt /d/sub/nested.txt; ls /d",
        ),
        sh("bind_file", "-v", &["-v", "{dir}/file.txt:/f.txt"], "cat /f.txt; echo more >> /f.txt")
            .host_check("cat $DIR/file.txt"),
        sh(
            "bind_read_only",
            "-v",
            &["-v", "{dir}:/d:ro"],
            "cat /d/file.txt; touch /d/x; echo $?",
        ),
        sh(
            "mount_bind_read_only",
            "--mount",
            &["--mount", "type=bind,src={dir},dst=/d,readonly"],
            "cat /d/file.txt; touch /d/x; echo $?",
        ),
        run(
            "mount_bind_missing_source",
            "--mount",
            &["--mount", "type=bind,src=/nonexistent/runvm,dst=/d"],
            &["true"],
        )
        .engine_refuses(),
        sh(
            "bind_missing_source_is_made",
            "-v",
            &["-v", "{dir}/made:/m"],
            "ls -ld /m | cut -c1-10",
        )
        .host_check("stat -c '%F %u:%g %a' $DIR/made"),
        sh(
            "bind_over_image_dir",
            "-v",
            &["-v", "{dir}:/home"],
            "ls /home",
        ),
        sh(
            "bind_nested_volume",
            "-v",
            &["-v", "{dir}:/d", "-v", "{vol}:/d/sub/inner"],
            "echo x > /d/sub/inner/f; ls /d/sub; cat /d/sub/inner/f",
        )
        .host_check("ls -R $DIR | sort"),
        sh(
            "bind_written_as_user",
            "-v",
            &["-u", "1000:1000", "-v", "{dir}:/d"],
            "echo data > /d/w/new; mkdir /d/w/sub; touch /d/file.txt; echo $?",
        )
        .host_check("stat -c '%n %u:%g %a %s %F' $DIR/w/new $DIR/w/sub; cat $DIR/w/new"),
        sh(
            "bind_modes_and_umask",
            "-v",
            &["-v", "{dir}:/d"],
            "umask 027; mkdir /d/m; echo x > /d/m/f; chmod 4750 /d/m/f; chown 1000:100 /d/m/f; stat -c '%a %u:%g' /d/m /d/m/f",
        )
        .host_check("stat -c '%n %a %u:%g' $DIR/m $DIR/m/f"),
        sh(
            "bind_timestamps",
            "-v",
            &["-v", "{dir}:/d"],
            "touch -d '2020-01-02 03:04:05' /d/t; mkdir /d/td; touch -d '2019-05-06 07:08:09' /d/td; stat -c '%Y' /d/t /d/td",
        )
        .host_check("stat -c '%n %Y' $DIR/t $DIR/td"),
        sh(
            "bind_links",
            "-v",
            &["-v", "{dir}:/d"],
            "ln -s file.txt /d/soft; ln /d/file.txt /d/hard; readlink /d/soft; stat -c %h /d/file.txt",
        )
        .host_check("readlink $DIR/soft; stat -c '%h' $DIR/file.txt; cat $DIR/hard"),
        sh(
            "bind_rename_and_delete",
            "-v",
            &["-v", "{dir}:/d"],
            "mv /d/file.txt /d/renamed; rm -r /d/sub; ls /d",
        )
        .host_check("ls $DIR; cat $DIR/renamed"),
        sh(
            "bind_big_file",
            "-v",
            &["-v", "{dir}:/d"],
            "head -c 8000000 /dev/urandom > /d/r; sha256sum /d/r | cut -c1-64 > /d/r.sha; wc -c < /d/r",
        )
        .host_check("sha256sum $DIR/r | cut -c1-64 | cmp - $DIR/r.sha && echo intact"),
        sh(
            "bind_sees_host_changes",
            "-v",
            &["-v", "{dir}:/d"],
            "cat /d/file.txt",
        ),
    ]
}

fn root_and_limits() -> Vec<Scenario> {
    vec![
        sh(
            "read_only_root",
            "--read-only",
            &["--read-only"],
            "touch /x; echo $?",
        ),
        sh(
            "read_only_root_with_tmpfs",
            "--read-only",
            &["--read-only", "--tmpfs", "/tmp"],
            "touch /tmp/x && echo ok; touch /etc/x; echo $?",
        ),
        sh(
            "read_only_root_volume",
            "--read-only",
            &["--read-only", "-v", "{vol}:/v"],
            "touch /v/x && echo ok",
        ),
        sh(
            "ulimit_nofile",
            "--ulimit",
            &["--ulimit", "nofile=1024:2048"],
            "ulimit -n; ulimit -Hn",
        ),
        sh(
            "ulimit_nproc",
            "--ulimit",
            &["--ulimit", "nproc=50"],
            "ulimit -u",
        ),
        sh(
            "ulimit_core",
            "--ulimit",
            &["--ulimit", "core=0"],
            "ulimit -c",
        ),
        sh(
            "ulimit_stack",
            "--ulimit",
            &["--ulimit", "stack=16777216:33554432"],
            "ulimit -s; ulimit -Hs",
        ),
        sh("ulimit_defaults", "--ulimit", &[], "ulimit -a"),
        run(
            "ulimit_bad",
            "--ulimit",
            &["--ulimit", "nofile=2048:1024"],
            &["true"],
        )
        .engine_refuses(),
    ]
}

fn resources() -> Vec<Scenario> {
    vec![
        run("cpuset_one", "--cpuset-cpus", &["--cpuset-cpus", "0"], &["nproc"]),
        run("cpuset_all", "--cpuset-cpus", &["--cpuset-cpus", "0-1"], &["nproc"]),
        run(
            "cpuset_out_of_range",
            "--cpuset-cpus",
            &["--cpuset-cpus", "7"],
            &["nproc"],
        )
        .engine_refuses()
        .normalise(runtime_error),
        run("cpus_one", "--cpus", &["--cpus", "1"], &["nproc"]).differs(
            "runvm gives the guest --cpus vCPUs, rounded up; runc shows every host CPU",
            |runc, runvm| expect_stdout(runc, runvm, "1\n"),
        ),
        run("cpus_fraction", "--cpus", &["--cpus", "0.5"], &["nproc"]).differs(
            "runvm gives the guest --cpus vCPUs, rounded up; runc shows every host CPU",
            |runc, runvm| expect_stdout(runc, runvm, "1\n"),
        ),
        run("nproc_default", "--cpus", &[], &["nproc"]),
        run("memory_small", "-m", &["-m", "64m"], &["echo", "ran"]),
        run("memory_6m", "-m", &["-m", "6m"], &["echo", "ran"]),
        run("memory_too_small", "-m", &["-m", "4m"], &["true"])
        .engine_refuses(),
        host(
            "memory_oom_killed",
            "-m",
            // dd's one 100 MB buffer: the only process that could be the
            // OOM killer's victim, so the outcome does not depend on its
            // choice.
            r#"run --name $C -m 32m --memory-swap 32m $IMAGE dd if=/dev/zero of=/dev/null bs=100M count=1
echo "exit $?"; docker inspect -f 'oom={{.State.OOMKilled}} code={{.State.ExitCode}}' $C"#,
        )
        .differs(
            "the guest's kernel kills the workload at its limit (exit 137, as runc), but Docker's \
             OOMKilled stays false: Docker learns of an OOM kill only from containerd's shim, which \
             watches the host cgroup, where the VM never runs out",
            |runc, runvm| {
                let exit = |s: &Side| s.stdout().lines().next().map(str::to_string);
                if exit(runc) != exit(runvm) || runvm.stdout() != "exit 137\noom=false code=137\n" {
                    return Err(format!("expected exit 137 as runc, got {:?}", runvm.stdout()));
                }
                Ok(())
            },
        ),
        sh(
            "memory_within_limit",
            "-m",
            &["-m", "64m"],
            "x=$(head -c 10000000 /dev/zero | tr '\\0' a); echo ${#x}",
        ),
        run(
            "memory_swap",
            "--memory-swap",
            &["-m", "64m", "--memory-swap", "128m"],
            &["echo", "ran"],
        ),
        run(
            "memory_swap_below_memory",
            "--memory-swap",
            &["-m", "64m", "--memory-swap", "32m"],
            &["true"],
        )
        .engine_refuses(),
        sh(
            "shm_size",
            "--shm-size",
            &["--shm-size", "8m"],
            "grep ' /dev/shm ' /proc/mounts",
        ),
        sh("shm_default", "--shm-size", &[], "grep ' /dev/shm ' /proc/mounts"),
        sh(
            "pids_limit_reached",
            "--pids-limit",
            &["--pids-limit", "10"],
            // Sleeps that outlast the loop, so the count of forks that
            // succeed does not depend on the machine's speed.
            "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 30 & done; echo all started",
        ),
        sh(
            "pids_limit_not_reached",
            "--pids-limit",
            &["--pids-limit", "20"],
            "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 30 & done; echo all started",
        ),
        sh(
            "pids_limit_image_cannot_lift",
            "--pids-limit",
            &["--pids-limit", "10", "-e", "RUNVM_CGROUPFS=none"],
            "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 30 & done; echo all started",
        ),
    ]
}

fn kernel_settings() -> Vec<Scenario> {
    vec![
        run(
            "sysctl_ip_forward",
            "--sysctl",
            &["--sysctl", "net.ipv4.ip_forward=1"],
            &["cat", "/proc/sys/net/ipv4/ip_forward"],
        ),
        run(
            "sysctl_conntrack",
            "--sysctl",
            &[
                "--sysctl",
                "net.netfilter.nf_conntrack_tcp_timeout_established=1000",
            ],
            &[
                "cat",
                "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established",
            ],
        ),
        run(
            "sysctl_bridge",
            "--sysctl",
            &["--sysctl", "net.bridge.bridge-nf-call-iptables=0"],
            &["cat", "/proc/sys/net/bridge/bridge-nf-call-iptables"],
        ),
        run(
            "sysctl_somaxconn",
            "--sysctl",
            &["--sysctl", "net.core.somaxconn=1024"],
            &["cat", "/proc/sys/net/core/somaxconn"],
        ),
        run(
            "sysctl_ipc",
            "--sysctl",
            &["--sysctl", "kernel.msgmax=65536"],
            &["cat", "/proc/sys/kernel/msgmax"],
        ),
        sh(
            "sysctl_docker_defaults",
            "--sysctl",
            &[],
            "cat /proc/sys/net/ipv4/ip_unprivileged_port_start /proc/sys/net/ipv4/ping_group_range",
        ),
        run(
            "sysctl_missing_key",
            "--sysctl",
            &["--sysctl", "net.ipv4.conf.all.no_such_key=1"],
            &["true"],
        )
        .normalise(runtime_error),
        run(
            "sysctl_not_namespaced",
            "--sysctl",
            &["--sysctl", "kernel.foo=1"],
            &["true"],
        )
        .engine_refuses(),
        sh(
            "sysctl_read_only",
            "--sysctl",
            &[],
            "echo 1 > /proc/sys/net/ipv4/ip_forward; echo $?",
        ),
    ]
}

fn privileges() -> Vec<Scenario> {
    vec![
        run(
            "caps_default",
            "--cap-add",
            &[],
            &["grep", "^Cap", "/proc/self/status"],
        ),
        run(
            "cap_drop_all",
            "--cap-drop",
            &["--cap-drop", "ALL"],
            &["grep", "^Cap", "/proc/self/status"],
        ),
        sh(
            "cap_drop_chown",
            "--cap-drop",
            &["--cap-drop", "CHOWN"],
            "chown 1000 /tmp; echo $?",
        ),
        run(
            "cap_add_net_admin",
            "--cap-add",
            &["--cap-add", "NET_ADMIN"],
            &["grep", "^Cap", "/proc/self/status"],
        ),
        sh(
            "cap_add_net_admin_works",
            "--cap-add",
            &["--cap-add", "NET_ADMIN"],
            "ip link set lo mtu 1400 && ip link show lo | grep -o 'mtu [0-9]*'",
        ),
        sh(
            "cap_net_admin_missing",
            "--cap-add",
            &[],
            "ip link set lo mtu 1400; echo $?",
        ),
        run(
            "cap_unknown",
            "--cap-add",
            &["--cap-add", "NOT_A_CAP"],
            &["true"],
        )
        .engine_refuses()
        .normalise(runtime_error),
        sh(
            "cap_drop_setuid_as_user",
            "--cap-drop",
            &["-u", "1000", "--cap-add", "SETUID"],
            "grep ^Cap /proc/self/status",
        ),
        run(
            "no_new_privileges",
            "--security-opt",
            &["--security-opt", "no-new-privileges"],
            &["grep", "NoNewPrivs", "/proc/self/status"],
        ),
        run(
            "new_privileges_default",
            "--security-opt",
            &[],
            &["grep", "NoNewPrivs", "/proc/self/status"],
        ),
        run(
            "seccomp_default",
            "--security-opt",
            &[],
            &["grep", "^Seccomp:", "/proc/self/status"],
        ),
        run(
            "seccomp_unconfined",
            "--security-opt",
            &["--security-opt", "seccomp=unconfined"],
            &["grep", "^Seccomp:", "/proc/self/status"],
        ),
        sh(
            "seccomp_blocks_keyctl",
            "--security-opt",
            &[],
            "unshare -U true; echo $?",
        ),
    ]
}

fn devices_and_namespaces() -> Vec<Scenario> {
    const NODE: &str = "stat -c '%F %t:%T %a %u:%g'";
    vec![
        sh(
            "device_renamed",
            "--device",
            &["--device", "/dev/null:/dev/mynull"],
            &format!("{NODE} /dev/mynull; echo x > /dev/mynull && echo wrote"),
        ),
        sh(
            "device_tun",
            "--device",
            &["--device", "/dev/net/tun"],
            &format!("{NODE} /dev/net/tun"),
        ),
        sh(
            "device_fuse",
            "--device",
            &["--device", "/dev/fuse"],
            &format!("{NODE} /dev/fuse"),
        ),
        sh(
            "device_read_only",
            "--device",
            &["--device", "/dev/null:/dev/mynull:r"],
            "cat /dev/mynull && echo read; echo x > /dev/mynull; echo wrote=$?",
        )
        .differs(
            "the device cgroup's r/w/m permissions are not enforced in the guest: the node is made \
             with the device's mode, and the VM is the boundary",
            |_runc, runvm| {
                if runvm.stdout() == "read\nwrote=0\n" {
                    Ok(())
                } else {
                    Err(format!("got {:?}", runvm.stdout()))
                }
            },
        ),
        host(
            "device_host_hardware",
            "--device",
            // The first of these the host has (none is a device the guest has).
            r#"for d in /dev/kvm /dev/mem /dev/loop0 /dev/vda /dev/sda /dev/tty0; do [ -e $d ] && break; done
run --rm --device $d $IMAGE true"#,
        )
        .differs(
            "refused: a VM cannot reach the host's hardware; runvm passes null, zero, full, random, \
             urandom, tty, ptmx, net/tun and fuse, which the guest has too",
            |runc, runvm| {
                runc.run.assert_code(0, "runc takes the host's device");
                refused(runvm, "--device /dev/")
            },
        ),
        run("pid_host", "--pid", &["--pid", "host"], &["true"]).differs(
            "refused: a VM cannot share the host's processes",
            |_runc, runvm| refused(runvm, "--pid host"),
        ),
        run("ipc_host", "--ipc", &["--ipc", "host"], &["true"]).differs(
            "refused: a VM cannot share the host's System V IPC and /dev/shm",
            |_runc, runvm| refused(runvm, "--ipc host"),
        ),
        run("ipc_shareable", "--ipc", &["--ipc", "shareable"], &["sh", "-c", "grep -c ' /dev/shm ' /proc/mounts"]),
        run("uts_host", "--uts", &["--uts", "host"], &["true"]).differs(
            "refused: a VM cannot share the host's hostname",
            |_runc, runvm| refused(runvm, "--uts host"),
        ),
        run("network_host", "--network", &["--network", "host"], &["true"]).differs(
            "refused: a VM cannot share the host's network stack (publish ports with -p)",
            |_runc, runvm| refused(runvm, "--network host"),
        ),
        run("network_none", "--network", &["--network", "none"], &["ip", "-o", "link"])
            .normalise(link_names),
        run(
            "oom_score_adj",
            "--oom-score-adj",
            &["--oom-score-adj", "500"],
            &["cat", "/proc/self/oom_score_adj"],
        ),
        host(
            "oom_score_adj_exec",
            "--oom-score-adj",
            r#"run -d --name $C --oom-score-adj 300 $IMAGE sh -c 'echo ready; sleep 600' >/dev/null
wait_log $C ready
docker exec $C cat /proc/self/oom_score_adj"#,
        ),
    ]
}

fn lifecycle() -> Vec<Scenario> {
    vec![
        host(
            "stop_default_signal",
            "--stop-signal",
            r#"run -d --name $C $IMAGE sh -c 'trap "echo got TERM; exit 7" TERM; echo ready; while :; do sleep 0.1; done' >/dev/null
wait_log $C ready && docker stop $C >/dev/null
docker inspect -f 'code={{.State.ExitCode}}' $C; docker logs $C"#,
        ),
        host(
            "stop_signal",
            "--stop-signal",
            r#"run -d --name $C --stop-signal USR1 $IMAGE sh -c 'trap "echo got USR1; exit 9" USR1; echo ready; while :; do sleep 0.1; done' >/dev/null
wait_log $C ready && docker stop $C >/dev/null
docker inspect -f 'code={{.State.ExitCode}}' $C; docker logs $C"#,
        ),
        host(
            "stop_timeout",
            "--stop-timeout",
            r#"run -d --name $C --stop-timeout 1 $IMAGE sh -c 'trap "" TERM; echo ready; while :; do sleep 0.1; done' >/dev/null
wait_log $C ready && docker stop $C >/dev/null
docker inspect -f 'code={{.State.ExitCode}} oom={{.State.OOMKilled}}' $C"#,
        ),
        host(
            "stop_writes_reach_the_host",
            "--stop-signal",
            r#"run -d --name $C -v $DIR:/d $IMAGE sh -c 'trap "echo last > /d/last; exit 0" TERM; echo ready; while :; do echo tick >> /d/ticks; sleep 0.1; done' >/dev/null
wait_log $C ready && docker stop $C >/dev/null
cat $DIR/last; [ -s $DIR/ticks ] && echo ticked"#,
        ),
        host(
            "kill_signal",
            "kill",
            r#"run -d --name $C $IMAGE sh -c 'trap "echo got HUP; exit 4" HUP; echo ready; while :; do sleep 0.1; done' >/dev/null
wait_log $C ready && docker kill -s HUP $C >/dev/null
docker wait $C; docker logs $C"#,
        ),
        host(
            "restart_on_failure",
            "--restart",
            r#"run -d --name $C --restart on-failure:2 $IMAGE sh -c 'echo run; exit 3' >/dev/null
wait_state $C '{{.RestartCount}} {{.State.Status}}' '2 exited'
docker inspect -f 'count={{.RestartCount}} code={{.State.ExitCode}}' $C; docker logs $C"#,
        ),
        host(
            "restart_on_failure_success",
            "--restart",
            r#"run -d --name $C --restart on-failure:2 $IMAGE sh -c 'echo run; exit 0' >/dev/null
wait_state $C '{{.State.Status}}' exited
docker inspect -f 'count={{.RestartCount}} code={{.State.ExitCode}}' $C; docker logs $C"#,
        ),
        host(
            "restart_always",
            "--restart",
            r#"run -d --name $C --restart always $IMAGE sh -c 'echo run; sleep 0.2; exit 5' >/dev/null
for i in $(seq 600); do n=$(docker inspect -f '{{.RestartCount}}' $C); [ "$n" -ge 2 ] && break; sleep 0.2; done
echo "restarted: $([ "$n" -ge 2 ] && echo yes)"
# Podman's rm -f may race a restart and log "container not running" (under
# runc too): what counts is that the container is gone.
docker rm -f $C >/dev/null 2>&1; docker inspect $C >/dev/null 2>&1 || echo removed"#,
        ),
        host(
            "wait_exit_code",
            "wait",
            r#"run -d --name $C $IMAGE sh -c 'sleep 1; exit 13' >/dev/null
docker wait $C"#,
        ),
        host(
            "start_attach_again",
            "start",
            r#"docker create --runtime $RT --name $C $IMAGE sh -c 'echo started; exit 2' >/dev/null
docker start -a $C; echo "exit $?"; docker start -a $C; echo "exit $?""#,
        ),
        host(
            "pause_unpause",
            "pause",
            r#"run -d --name $C $IMAGE sh -c 'echo ready; while :; do sleep 0.1; done' >/dev/null
wait_log $C ready
docker pause $C; docker inspect -f '{{.State.Status}}' $C
docker exec $C true; echo "exec while paused: $?"
docker unpause $C; docker inspect -f '{{.State.Status}}' $C
docker exec $C echo alive"#,
        ),
        host(
            "stats_sane",
            "stats",
            r#"run -d --name $C -m 256m $IMAGE sh -c 'echo ready; sleep 600' >/dev/null
wait_log $C ready
docker stats --no-stream --format '{{.MemUsage}} {{.PIDs}}' $C"#,
        )
        .differs(
            "docker stats shows the VM's host memory (QEMU, virtiofsd, the supervisor) against the \
             host cgroup's limit: the container's, plus the guest kernel's 64 MiB and QEMU's 256 MiB",
            |runc, runvm| {
                if !runc.stdout().contains(" / 256MiB ") {
                    return Err(format!("runc's limit is not 256MiB: {:?}", runc.stdout()));
                }
                // "138.2MiB / 580MiB 14"
                let out = runvm.stdout();
                let f: Vec<&str> = out.split_whitespace().collect();
                let mib = |s: &str| -> Option<f64> {
                    let (n, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
                    let n: f64 = n.parse().ok()?;
                    Some(match unit {
                        "GiB" => n * 1024.0,
                        "MiB" => n,
                        "KiB" => n / 1024.0,
                        _ => return None,
                    })
                };
                match (f.first().and_then(|s| mib(s)), f.get(2).and_then(|s| mib(s)), f.get(3)) {
                    (Some(used), Some(limit), Some(pids))
                        if limit
                            == (runvm_config::rewrite::host_memory_limit(256 << 20) >> 20) as f64
                            && used > 0.0
                            && used < limit
                            && pids.parse::<u32>().is_ok_and(|p| p > 0) =>
                    {
                        Ok(())
                    }
                    _ => Err(format!("not sane: {out:?}")),
                }
            },
        ),
        host(
            "top",
            "top",
            r#"run -d --name $C $IMAGE sh -c 'echo ready; sleep 600' >/dev/null
wait_log $C ready
docker top $C -o pid,comm | tail -n +2 | awk '{print $2}' | sort"#,
        )
        .differs(
            "docker top shows the container's host processes: runvm's supervisor, QEMU and virtiofsd",
            |runc, runvm| {
                let out = runvm.stdout();
                // Podman's top runs ps in the container: the guest's.
                if (out.contains("qemu-system") && out.contains("runvm-")) || out == runc.stdout() {
                    Ok(())
                } else {
                    Err(format!("expected QEMU and runvm's supervisor, got {out:?}"))
                }
            },
        ),
    ]
}

fn logs() -> Vec<Scenario> {
    let script = |driver: &str| {
        format!(
            r#"run --name $C --log-driver {driver} $IMAGE sh -c 'echo out; echo err >&2; echo out2'; echo "exit $?"
docker logs $C; echo "logs exit $?""#
        )
    };
    vec![
        host("log_json_file", "--log-driver", &script("json-file")),
        host("log_local", "--log-driver", &script("local")),
        host("log_none", "--log-driver", &script("none")),
        host(
            "log_timestamps_order",
            "--log-driver",
            r#"run --name $C $IMAGE sh -c 'for i in 1 2 3 4 5; do echo line$i; done' >/dev/null
docker logs -t $C | cut -d' ' -f2-; docker logs --tail 2 $C"#,
        ),
    ]
}

fn container_files() -> Vec<Scenario> {
    vec![
        host(
            "cp_into_created",
            "cp",
            r#"docker create --runtime $RT --name $C $IMAGE cat /tmp/file.txt >/dev/null
docker cp $DIR/file.txt $C:/tmp/; docker start -a $C"#,
        ),
        host(
            "cp_out_of_exited",
            "cp",
            r#"run --name $C $IMAGE sh -c 'echo made > /tmp/made'
docker cp $C:/tmp/made $DIR/out && cat $DIR/out"#,
        ),
        host(
            "cp_running",
            "cp",
            r#"run -d --name $C $IMAGE sh -c 'echo ready; sleep 600' >/dev/null
wait_log $C ready
docker cp $DIR/file.txt $C:/root/in.txt && docker exec $C cat /root/in.txt
docker exec $C sh -c 'echo from-vm > /root/out.txt'
docker cp $C:/root/out.txt $DIR/out.txt && cat $DIR/out.txt"#,
        ),
        host(
            "export",
            "export",
            r#"run --name $C $IMAGE sh -c 'echo x > /newfile'
docker export $C | tar -t | grep -E '^(\./)?(newfile|bin/sh|etc/passwd)$' | sed 's|^\./||' | sort"#,
        ),
        host(
            "diff",
            "diff",
            r#"run --name $C $IMAGE sh -c 'echo x > /newfile; rm /etc/group; mkdir /tmp/d; echo y >> /etc/passwd'
docker diff $C | sort"#,
        ),
        host(
            "commit",
            "commit",
            r#"run --name $C $IMAGE sh -c 'echo committed > /c'
docker commit $C $C-img >/dev/null && run --rm $C-img cat /c"#,
        ),
        host(
            "rename_and_restart",
            "rename",
            r#"run -d --name $C $IMAGE sh -c 'echo ready; sleep 600' >/dev/null
wait_log $C ready
docker rename $C $C-renamed && docker restart -t 1 $C-renamed >/dev/null && docker exec $C-renamed echo back"#,
        ),
    ]
}

fn exec() -> Vec<Scenario> {
    let with = |body: &str| {
        format!(
            "run -d --name $C -e FROM_RUN=1 $IMAGE sh -c 'echo ready; sleep 600' >/dev/null\nwait_log $C ready\n{body}"
        )
    };
    vec![
        host(
            "exec_workdir_new",
            "exec -w",
            &with("docker exec -w /new/dir $C pwd; echo \"exit $?\""),
        )
        .normalise(runtime_error),
        host(
            "exec_workdir",
            "exec -w",
            &with("docker exec -w /tmp $C pwd"),
        ),
        host(
            "exec_workdir_in_tmpfs",
            "exec -w",
            r#"run -d --name $C --tmpfs /scratch $IMAGE sh -c 'mkdir /scratch/work; echo ready; sleep 600' >/dev/null
wait_log $C ready
docker exec -w /scratch/work $C pwd"#,
        ),
        host(
            "exec_workdir_missing_in_tmpfs",
            "exec -w",
            r#"run -d --name $C --tmpfs /scratch $IMAGE sh -c 'echo ready; sleep 600' >/dev/null
wait_log $C ready
docker exec -w /scratch/none $C pwd; echo "exit $?""#,
        )
        .normalise(runtime_error)
        .differs(
            "a working directory in a --tmpfs (or elsewhere only the guest has) that does not exist: \
             exit 126 as under runc, but the guest tells it, in runc's words, on stderr, where Docker \
             prints runc's on stdout",
            exit_126_in_runcs_words,
        ),
        host("exec_user", "exec -u", &with("docker exec -u 1000:100 $C id; docker exec -u nobody $C id")),
        host(
            "exec_user_unknown",
            "exec -u",
            &with("docker exec -u nosuchuser $C id; echo \"exit $?\""),
        )
        .engine_refuses()
        .normalise(runtime_error),
        host(
            "exec_env",
            "exec -e",
            &with("docker exec -e X=1 $C sh -c 'echo $X $FROM_RUN'"),
        ),
        host("exec_env_whole", "exec -e", &with("docker exec $C env | sort")),
        host(
            "exec_exit_code",
            "exec",
            &with("docker exec $C sh -c 'exit 5'; echo \"exit $?\""),
        ),
        host(
            "exec_not_found",
            "exec",
            &with("docker exec $C nosuchcommand; echo \"exit $?\""),
        )
        .normalise(runtime_error),
        host(
            "exec_stdin",
            "exec -i",
            &with("printf 'a\\nb\\n' | docker exec -i $C sort -r"),
        ),
        host(
            "exec_detached",
            "exec -d",
            &with("docker exec -d $C sh -c 'echo done > /tmp/d'; for i in $(seq 100); do docker exec $C test -f /tmp/d && break; sleep 0.1; done; docker exec $C cat /tmp/d"),
        ),
        host(
            "exec_capabilities",
            "exec",
            &with("docker exec $C grep ^Cap /proc/self/status; docker exec -u 1000 $C grep ^Cap /proc/self/status"),
        ),
        host(
            "exec_capabilities_of_a_user_container",
            "exec",
            r#"run -d --name $C -u 1000 $IMAGE sh -c 'echo ready; sleep 600' >/dev/null
wait_log $C ready
docker exec $C grep ^Cap /proc/self/status
docker exec -u 0 $C grep ^Cap /proc/self/status
docker exec $C touch /etc/x; echo "exit $?""#,
        ),
        host(
            "exec_held_to_pids_limit",
            "exec",
            r#"run -d --name $C --pids-limit 8 $IMAGE sh -c 'echo ready; sleep 600' >/dev/null
wait_log $C ready
docker exec $C sh -c 'for i in 1 2 3 4 5 6 7 8 9 10; do sleep 1 & done; wait; echo all started'; echo "exit $?""#,
        ),
        host(
            "exec_held_to_memory_limit",
            "exec",
            r#"run -d --name $C -m 32m --memory-swap 32m $IMAGE sh -c 'echo ready; sleep 600' >/dev/null
wait_log $C ready
docker exec $C dd if=/dev/zero of=/dev/null bs=100M count=1; echo "exit $?""#,
        ),
        sh(
            "memory_child_killed",
            "-m",
            &["-m", "32m", "--memory-swap", "32m"],
            "dd if=/dev/zero of=/dev/null bs=100M count=1; echo \"dd exit $?\"",
        ),
        host(
            "exec_in_stopped",
            "exec",
            "run --name $C $IMAGE true; docker exec $C true; echo \"exit $?\"",
        )
        .engine_refuses(),
    ]
}

/// A runtime's own error text differs (runc's words against runvm's): keep
/// Docker's part and the exit code, drop the text after "OCI runtime … failed".
/// Podman names the runtime first (`Error: runc: <runc's words>: OCI
/// runtime error`), and there runvm's words must be runc's: only the name
/// becomes `<runtime>`.
fn runtime_error(text: &str) -> String {
    text.lines()
        .map(|l| {
            for rt in ["Error: runc: ", "Error: runvm: "] {
                if let Some(rest) = l.strip_prefix(rt) {
                    return format!("Error: <runtime>: {rest}");
                }
            }
            match l.find("OCI runtime") {
                Some(i) => format!("{}OCI runtime error", &l[..i]),
                None => l.to_string(),
            }
        })
        .map(|l| l + "\n")
        .collect()
}

/// For `.differs`: runvm refused the container with exit 125 and one line
/// naming `what` as not supported.
fn refused(runvm: &Side, what: &str) -> Result<(), String> {
    let lines: Vec<String> = runvm
        .stderr()
        .lines()
        .filter(|l| l.contains(what) && l.contains("not supported by runvm"))
        .map(str::to_string)
        .collect();
    // Docker's exit code for a runtime's refusal is 125, Podman's 126.
    if matches!(runvm.run.code, 125 | 126) && lines.len() == 1 {
        Ok(())
    } else {
        Err(format!(
            "expected exit 125 (126 under Podman) and one line naming {what}"
        ))
    }
}

/// `ip -o link` of a container without a network: just the names and
/// states (the guest's loopback has no qdisc line of the host's).
fn link_names(text: &str) -> String {
    text.lines()
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" ") + "\n")
        .collect()
}

/// The container's own address differs between two containers.
fn ipv4(text: &str) -> String {
    String::from_utf8_lossy(&crate::normalise_ipv4(text.as_bytes())).into_owned()
}

/// For `.differs`: runvm's stdout is `want`, everything else is the same.
fn expect_stdout(runc: &Side, runvm: &Side, want: &str) -> Result<(), String> {
    if runvm.stdout() != want {
        return Err(format!(
            "runvm printed {:?}, expected {want:?}",
            runvm.stdout()
        ));
    }
    if runc.run.code != runvm.run.code || runc.stderr() != runvm.stderr() {
        return Err("exit code or stderr differ".to_string());
    }
    Ok(())
}

/// Scenarios that only Docker has: the `local` log driver, and `docker
/// stats`'s figures, which the check reads in Docker's units.
const DOCKER_ONLY: &[&str] = &["log_local", "stats_sane"];

/// Scenarios that print the whole environment. Podman keeps a container's
/// environment in a map, so the order it hands any runtime (runc too)
/// changes from one container to the next: under Podman their lines are
/// compared sorted.
const WHOLE_ENVIRONMENT: &[&str] = &["env_whole", "env_file"];

/// A difference that only Podman shows: the scenario's name, why, and the
/// check that runvm's side is as the README says.
type PodmanDifference = (
    &'static str,
    &'static str,
    fn(&Side, &Side) -> Result<(), String>,
);

/// `exec_workdir_missing_in_tmpfs` under runvm: exit 126, runc's words.
fn exit_126_in_runcs_words(_runc: &Side, runvm: &Side) -> Result<(), String> {
    let ok = runvm.stdout() == "exit 126\n"
        && runvm
            .stderr()
            .contains("chdir to cwd (\"/scratch/none\") set in config.json failed");
    ok.then_some(())
        .ok_or_else(|| "not exit 126 with runc's words".to_string())
}

/// Differences under Podman alone (README, "Podman").
pub const PODMAN_DIFFERENCES: &[PodmanDifference] = &[
    (
        "exec_workdir_missing_in_tmpfs",
        "`podman exec -w` into a missing directory inside a `--tmpfs`: the guest finds it \
         missing, once runvm's exec has started, and the exec exits 126 with runc's words on \
         stderr; under runc the runtime itself fails, which Podman reports as exit 127. \
         (Known bug: under load, the guest's words are sometimes lost and the exec says the \
         VM did not accept it; the exit code is 126 either way)",
        |runc, runvm| {
            exit_126_in_runcs_words(runc, runvm).or_else(|e| {
                // The known bug above: tolerated with exit 126 only.
                let lost = runvm.stdout() == "exit 126\n"
                    && runvm.stderr().contains("the VM did not accept the exec");
                lost.then_some(()).ok_or(e)
            })
        },
    ),
    (
        "cp_running",
        "`podman cp` to or from a running container: Podman copies inside the mount \
         namespace of the runtime's process, which for runvm is the host side's (QEMU's), \
         not the guest's; it fails with Podman's \"could not be found on container\". \
         Copying to or from a stopped container works, as does `podman exec -i C tar`",
        |_runc, runvm| {
            if runvm.run.code != 0 && runvm.stderr().contains("could not be found on container") {
                Ok(())
            } else {
                Err("not Podman's \"could not be found on container\"".into())
            }
        },
    ),
];

/// The table as Podman runs it (see [`DOCKER_ONLY`], [`WHOLE_ENVIRONMENT`],
/// [`PODMAN_DIFFERENCES`]).
pub fn podman_scenarios() -> Vec<Scenario> {
    scenarios()
        .into_iter()
        .filter(|s| !DOCKER_ONLY.contains(&s.name))
        .map(|mut s| {
            if WHOLE_ENVIRONMENT.contains(&s.name) {
                assert!(s.normalise.is_none(), "{} has a normaliser", s.name);
                s = s.normalise(sorted_lines);
            }
            if let Some((_, why, check)) = PODMAN_DIFFERENCES.iter().find(|d| d.0 == s.name) {
                s = s.differs(why, *check);
            }
            s
        })
        .collect()
}

/// `text`'s lines in sorted order.
fn sorted_lines(text: &str) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// The README's table of options, made from the scenarios: one row per
/// option, "as under runc" when every scenario of it gives the same, else
/// each documented difference.
pub fn options_table() -> String {
    use crate::differential::Expect;
    let all = scenarios();
    let mut options: Vec<&str> = Vec::new();
    for s in &all {
        if !options.contains(&s.option) {
            options.push(s.option);
        }
    }
    let mut out = String::from("| option | under runvm | scenarios |\n|---|---|---|\n");
    for option in options {
        let of: Vec<&Scenario> = all.iter().filter(|s| s.option == option).collect();
        let mut whys: Vec<&str> = Vec::new();
        for s in &of {
            if let Expect::Differs { why, .. } = s.expect {
                if !whys.contains(&why) {
                    whys.push(why);
                }
            }
        }
        let verdict = if whys.is_empty() {
            "as under runc".to_string()
        } else {
            format!("differs: {}", whys.join("; "))
        };
        let names: Vec<String> = of.iter().map(|s| format!("`{}`", s.name)).collect();
        out += &format!("| `{option}` | {verdict} | {} |\n", names.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_the_table_is_big_enough() {
        let all = scenarios();
        let mut names: Vec<&str> = all.iter().map(|s| s.name).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(n, names.len(), "duplicate scenario names");
        assert!(n >= 100, "only {n} scenarios");
    }

    /// README.md's table is the one [`options_table`] makes; with
    /// `RUNVM_UPDATE_README=1` this test writes it there.
    #[test]
    fn the_readme_lists_every_option_as_the_table_has_it() {
        const BEGIN: &str = "<!-- options table: made by `RUNVM_UPDATE_README=1 cargo test -p runvm-e2e --lib` -->\n";
        const END: &str = "<!-- end of options table -->";
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
        let readme = std::fs::read_to_string(path).expect("README.md");
        let start = readme
            .find(BEGIN)
            .expect("README.md has the options table's begin marker")
            + BEGIN.len();
        let end = readme[start..]
            .find(END)
            .expect("README.md has the end marker")
            + start;
        let want = options_table();
        if readme[start..end] != want {
            if std::env::var("RUNVM_UPDATE_README").as_deref() == Ok("1") {
                std::fs::write(
                    path,
                    format!("{}{want}{}", &readme[..start], &readme[end..]),
                )
                .expect("write README.md");
            } else {
                panic!(
                    "README.md's options table is not the scenarios' (run RUNVM_UPDATE_README=1 \
                     cargo test -p runvm-e2e --lib to update it); it should be:\n{want}"
                );
            }
        }
    }

    #[test]
    fn runtime_error_keeps_dockers_part() {
        assert_eq!(
            runtime_error("docker: Error response from daemon: OCI runtime create failed: runc says no\nnext\n"),
            "docker: Error response from daemon: OCI runtime error\nnext\n"
        );
    }
}
