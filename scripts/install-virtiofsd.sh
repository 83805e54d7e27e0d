#!/usr/bin/env bash
# Installs virtiofsd (from crates.io; Debian 12 does not package the Rust
# virtiofsd) into runvm's libexec directory.
. "$(dirname "$0")/lib.sh"
need_root
VERSION=1.14.0
if [ -x "$RUNVM_LIBEXEC/virtiofsd" ] && "$RUNVM_LIBEXEC/virtiofsd" --version 2>/dev/null | grep -q "$VERSION"; then
    exit 0
fi
mkdir -p "$RUNVM_LIBEXEC"
for cand in /usr/local/lib/runvm/virtiofsd /usr/libexec/virtiofsd "$HOME/.cargo/bin/virtiofsd"; do
    if [ -x "$cand" ] && "$cand" --version 2>/dev/null | grep -q "$VERSION"; then
        install -m 0755 "$cand" "$RUNVM_LIBEXEC/virtiofsd"
        exit 0
    fi
done
say "building virtiofsd $VERSION with cargo (about 2 minutes)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cargo install --quiet --locked --root "$tmp" --version "$VERSION" virtiofsd
install -m 0755 "$tmp/bin/virtiofsd" "$RUNVM_LIBEXEC/virtiofsd"
