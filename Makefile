# runvm — run containers as lightweight VMs.
#
#   make demo       install what is missing, register runvm with Docker, run a VM
#   make test       install what is missing and run every test (unit, e2e, differential)
#   make bench      boot-time and memory figures against runc and bare QEMU
#   make soak       many containers and lifecycles, then a table of leaks (slow)
#   make install    build and install runvm, QEMU, virtiofsd, the guest kernel
#   make uninstall  remove runvm and its Docker and Podman registration
#   make deb        build target/runvm_<version>_amd64.deb (binaries, virtiofsd, the guest kernel)
#
# Every target is idempotent.

SHELL := /bin/bash
PREFIX ?= /usr/local
LIBEXEC := $(PREFIX)/lib/runvm
DATA ?= /var/lib/runvm
TARGET := x86_64-unknown-linux-gnu
AGENT := target/$(TARGET)/release/runvm-agent
NETTOOL := target/$(TARGET)/release/runvm-nettool
export RUNVM_PREFIX := $(PREFIX)

.PHONY: all build deps kernel install uninstall demo test unit e2e lint bench soak nettool images deb deb-test

all: build

deps:
	@scripts/install-deps.sh

# The guest agent is a static binary (it is /init of the initramfs); the
# host binaries link dynamically against the host's libc.
build:
	cargo build --release --locked -p runvm -p runvm-supervisor
	CARGO_PROFILE_RELEASE_LTO=fat RUSTFLAGS="-C target-feature=+crt-static" \
		cargo build --release --locked -p runvm-agent --target $(TARGET)

install: deps build kernel
	@install -d $(PREFIX)/bin $(LIBEXEC)
	install -m 0755 target/release/runvm $(PREFIX)/bin/runvm
	install -m 0755 target/release/runvm-supervisor $(AGENT) $(LIBEXEC)/
	@scripts/install-virtiofsd.sh
	@scripts/ensure-docker.sh --register
	@$(PREFIX)/bin/runvm podman-register
	@$(PREFIX)/bin/runvm check

uninstall:
	-@if [ -x $(PREFIX)/bin/runvm ]; then $(PREFIX)/bin/runvm docker-unregister /etc/docker/daemon.json; $(PREFIX)/bin/runvm podman-unregister; fi
	-@pid=$$(pidof dockerd) && kill -HUP $$pid || true
	rm -f $(PREFIX)/bin/runvm
	rm -rf $(LIBEXEC) $(DATA) /var/cache/runvm

# The test image carries nettool (tests/nettool), static like the agent.
nettool: install
	RUSTFLAGS="-C target-feature=+crt-static" \
		cargo build --release --locked -p runvm-nettool --target $(TARGET)

images: nettool
	@scripts/build-test-images.sh $(NETTOOL)

# The demo needs the busybox image only.
demo: nettool
	@scripts/build-test-images.sh $(NETTOOL) --demo
	@echo "host kernel:  $$(uname -r)"
	@echo -n "guest kernel: " && docker run --rm --runtime=runvm runvm-test/busybox uname -r
	@docker run --rm --runtime=runvm runvm-test/busybox sh -c 'echo "hello from a VM: $$(cat /proc/cpuinfo | grep -m1 "model name")"'

lint:
	@command -v shellcheck >/dev/null || scripts/install-deps.sh
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	shellcheck -x -P scripts scripts/*.sh .ci/run

# --include-ignored: the initramfs builder is also tried on the real guest
# kernel, which a plain `cargo test` leaves out. Skipped: the check that
# the network fixtures match a live namespace, which
# scripts/record-net-fixtures.sh runs inside the containers it records.
unit: kernel
	RUNVM_TEST_KERNEL_ROOT=$$(ls -d $(DATA)/kernel/*-cloud-amd64/ | sort -V | tail -1) \
		cargo test --workspace --locked --exclude runvm-e2e -- --include-ignored \
		--skip the_real_reader_sees_what_ip_shows

kernel: deps
	@scripts/install-kernel.sh

# The leftovers check is a step of its own, after every other test.
# --no-fail-fast: one failing test binary does not hide the others' results.
e2e: images
	RUNVM_E2E=1 cargo test --locked --no-fail-fast -p runvm-e2e -- --test-threads=2
	RUNVM_E2E=1 cargo test --locked -p runvm-e2e --test leftovers

test: images lint unit e2e

bench: images
	@scripts/build-test-images.sh $(NETTOOL) --bench
	@scripts/bench.sh

deb: build kernel
	@scripts/build-deb.sh $(AGENT)

# Not part of `test`: it uninstalls runvm, installs the package, runs VMs
# under Docker and Podman, purges it and installs the tree's runvm again.
deb-test: deb images
	@scripts/deb-smoke.sh

# Not part of `test`: 20 concurrent VMs and 200 lifecycles take a while.
soak: images
	@scripts/soak.sh
