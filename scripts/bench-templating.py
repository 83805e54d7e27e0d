#!/usr/bin/env python3
"""VM templating, measured (make bench): boot the boot probe's machine
(KERNEL, INITRD; no root file system, no NIC: QEMU 7.2 cannot migrate a
vhost-user-fs device) until the agent waits for the host, save it with QMP
`migrate` to a file, then time restores (a new QEMU with -incoming, until
the agent answers a yamux ping) against cold boots to the agent being
ready. Not a runvm feature: the README's "VM templating" says what
stands between this and one.

usage: bench-templating.py KERNEL INITRD"""
import glob, json, os, shutil, socket, statistics, subprocess, sys, tempfile, time

K = sys.argv[1]
I = sys.argv[2]
D = tempfile.mkdtemp(prefix="runvm-template-")
QEMU = "/usr/bin/qemu-system-x86_64"

def args(agent, qmp, probe=False):
    append = "console=ttyS0 panic=-1 rdinit=/init pci=lastbus=0 random.trust_cpu=on 8250.nr_uarts=1 no_timer_check quiet"
    if probe:
        append += " runvm.probe"
    return [QEMU, "-name", "runvm", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-accel", "tcg,thread=multi,tb-size=64", "-cpu", "max", "-smp", "2", "-m", "512M",
            "-object", "memory-backend-memfd,id=mem,size=512M,share=on", "-machine", "q35,memory-backend=mem",
            "-bios", "/usr/share/qemu/qboot.rom", "-kernel", K, "-initrd", I, "-append", append,
            "-device", "virtio-serial-pci,id=vser", "-chardev", f"socket,id=agent,path={agent},server=on,wait=off",
            "-device", "virtserialport,bus=vser.0,chardev=agent,name=io.runvm.agent", "-device", "virtio-rng-pci",
            "-device", "virtio-balloon-pci,id=balloon,free-page-reporting=on",
            "-chardev", f"socket,id=qmp,path={qmp},server=on,wait=off", "-mon", "chardev=qmp,mode=control",
            "-serial", "stdio"]

class Qmp:
    def __init__(self, path):
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX); self.s.connect(path); break
            except OSError:
                time.sleep(0.002)
        self.f = self.s.makefile("rw")
        json.loads(self.f.readline())
        self.cmd("qmp_capabilities")
    def cmd(self, name, **a):
        self.f.write(json.dumps({"execute": name, "arguments": a} if a else {"execute": name}) + "\n"); self.f.flush()
        while True:
            r = json.loads(self.f.readline())
            if "return" in r or "error" in r:
                return r

def clean():
    for p in glob.glob(D + "/*.sock"):
        os.unlink(p)

def now():
    return time.monotonic() * 1000

# Cold boots to "agent ready" (the probe prints it and powers off).
cold = []
for _ in range(5):
    clean(); t0 = now()
    p = subprocess.Popen(args(D + "/c.sock", D + "/cq.sock", probe=True), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in p.stdout:
        if "runvm-agent: ready" in line:
            cold.append(now() - t0); break
    p.kill(); p.wait()

# The template: booted, agent waiting on its port.
clean()
p = subprocess.Popen(args(D + "/a0.sock", D + "/q0.sock"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
q = Qmp(D + "/q0.sock")
time.sleep(4)
t0 = now(); q.cmd("stop")
q.cmd("migrate", uri=f"exec:cat > {D}/tpl.mig")
while q.cmd("query-migrate")["return"].get("status") != "completed":
    time.sleep(0.01)
saved = now() - t0
p.kill(); p.wait()
size = os.path.getsize(D + "/tpl.mig") >> 20

restores = []
running_at = []
for _ in range(5):
    clean(); t0 = now()
    p = subprocess.Popen(args(D + "/a1.sock", D + "/q1.sock") + ["-incoming", f"exec:cat {D}/tpl.mig"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    q = Qmp(D + "/q1.sock")
    while q.cmd("query-status")["return"]["status"] == "inmigrate":
        time.sleep(0.002)
    # The agent's yamux answers a ping (type 2, flag SYN) with an ACK.
    a = socket.socket(socket.AF_UNIX); a.connect(D + "/a1.sock")
    q.cmd("cont")
    assert q.cmd("query-status")["return"]["status"] == "running"
    running = now() - t0
    a.sendall(bytes([0, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7]))
    reply = a.recv(12)
    assert len(reply) == 12 and reply[1] == 2, reply
    restores.append(now() - t0)
    running_at.append(running)
    p.kill(); p.wait()

shutil.rmtree(D, ignore_errors=True)
print(f"cold boot to agent ready: median {statistics.median(cold):.0f} ms (min {min(cold):.0f}, max {max(cold):.0f})")
print(f"template saved in {saved:.0f} ms, {size} MiB")
print(f"restore to running:       median {statistics.median(running_at):.0f} ms (min {min(running_at):.0f}, max {max(running_at):.0f})")
print(f"restore to agent answering: median {statistics.median(restores):.0f} ms (min {min(restores):.0f}, max {max(restores):.0f})")
