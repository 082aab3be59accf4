#!/usr/bin/env bash
# Installs everything thread-observer needs on a Debian 12 host (or image), idempotently:
# Debian packages (bcc, kernel headers for this architecture, and for development
# redis-server, prometheus, musl-tools, jsonnet), the kernel-header link bcc compiles against,
# tracefs, and a virtual environment that sees bcc.
#
#   deploy/setup.sh [--venv DIR] [--extras test] [--no-venv]       # development (make setup)
#   deploy/setup.sh --runtime --venv DIR --install WHEEL           # the image's final stage
#
# --runtime installs only what `thread-observer run` needs: bcc and Python, no headers (a node
# brings its own: /lib/modules and /usr/src mounted from the host, or the kernel's
# /sys/kernel/kheaders.tar.xz), no tracefs mount (the host's is mounted), no compilers, servers
# or test tools. --install puts that package file (a wheel) in the venv instead of this source
# tree, editable. A second run does nothing but checks and takes seconds.
set -euo pipefail

VENV=.venv
EXTRAS=""
MAKE_VENV=1
RUNTIME=0
INSTALL=""
while [ $# -gt 0 ]; do
  case "$1" in
    --venv) VENV=$2; shift 2 ;;
    --extras) EXTRAS=$2; shift 2 ;;
    --no-venv) MAKE_VENV=0; shift ;;
    --runtime) RUNTIME=1; shift ;;
    --install) INSTALL=$2; shift 2 ;;
    *) echo "setup: unknown option $1" >&2; exit 2 ;;
  esac
done

say() { echo "setup: $*" >&2; }
here=$(cd "$(dirname "$0")/.." && pwd)

# bcc must come from Debian (python3-bpfcc): the PyPI package named "bcc" is unrelated. It
# compiles the probes in a short-lived child; the daemon then works their maps and attachments
# through libbpf (libbpf1, which python3-bpfcc brings), never mapping LLVM.
# Kernel headers are Debian's metapackage for this machine's architecture (amd64, arm64).
ARCH=$(dpkg --print-architecture)
RUNTIME_PACKAGES="python3-bpfcc python3-venv"
# jsonnet renders the monitoring mixin (deploy/render.py, and the test that the rendered files
# are current).
PACKAGES="$RUNTIME_PACKAGES bpfcc-tools bpftool linux-headers-$ARCH redis-server prometheus musl-tools jsonnet iproute2 util-linux procps"
# The tests open the HTML timeline in a real headless browser, boot other kernels under qemu
# (the kernel matrix: busybox-static makes their initramfs), and build and run the image with
# podman (runc: crun refuses hybrid cgroup hierarchies) on a base made by mmdebstrap; a runtime
# image needs none.
TEST_PACKAGES="chromium qemu-system-x86 busybox-static podman runc mmdebstrap"
case ",$EXTRAS," in *,test,*) PACKAGES="$PACKAGES $TEST_PACKAGES" ;; esac
[ "$RUNTIME" = 1 ] && PACKAGES="$RUNTIME_PACKAGES"

install_packages() {
  local missing=""
  for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
  if [ -z "$missing" ]; then
    say "Debian packages present"
    return
  fi
  if [ "$(id -u)" != 0 ]; then
    say "missing Debian packages:$missing (run as root: apt-get install$missing)"; exit 1
  fi
  say "installing Debian packages:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  # shellcheck disable=SC2086
  apt-get install -y -q --no-install-recommends $missing >/dev/null
  # The packaged services are not wanted running: tests and the demo start their own.
  for svc in redis-server prometheus prometheus-node-exporter; do
    service "$svc" stop >/dev/null 2>&1 || true
  done
}

# bcc compiles probes against /lib/modules/$(uname -r)/build. When the running kernel has no
# headers package (custom or cloud kernels), link Debian's newest linux-headers-*-amd64
# instead: tracepoint and uprobe programs do not depend on kernel struct layouts.
link_headers() {
  local mod="/lib/modules/$(uname -r)"
  if [ -e "$mod/build/include/linux/kconfig.h" ] || [ -e "$mod/build/include/generated" ]; then
    say "kernel headers: $(readlink -f "$mod/build")"
    return
  fi
  local arch common
  arch=$(ls -d /usr/src/linux-headers-*-"$ARCH" 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$arch" ]; then
    say "no kernel headers: apt-get install linux-headers-$(uname -r) or linux-headers-$ARCH"; exit 1
  fi
  common=${arch%-"$ARCH"}-common
  mkdir -p "$mod"
  ln -sfn "$arch" "$mod/build"
  [ -d "$common" ] && ln -sfn "$common" "$mod/source"
  say "no headers for kernel $(uname -r): linked $mod/build -> $arch and $mod/source -> $common"
}

mount_tracefs() {
  if [ -e /sys/kernel/tracing/events ] || [ -e /sys/kernel/debug/tracing/events ]; then
    return
  fi
  if mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null; then
    say "mounted tracefs at /sys/kernel/tracing"
  else
    say "could not mount tracefs at /sys/kernel/tracing (needed by bcc for tracepoints and uprobes)"
  fi
}

make_venv() {
  # Debian's python3 with --system-site-packages is how a venv sees python3-bpfcc.
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
  fi
  local stamp="$VENV/.thread-observer-installed" source="$here/pyproject.toml"
  local -a spec=(-e "$here${EXTRAS:+[$EXTRAS]}")
  if [ -n "$INSTALL" ]; then
    spec=("$INSTALL${EXTRAS:+[$EXTRAS]}")
    source=$INSTALL
  fi
  local want
  want=$(sha256sum < "$source" | cut -c1-16)-$EXTRAS
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    say "$VENV up to date"
    return
  fi
  say "installing thread-observer into $VENV"
  if [ "$RUNTIME" = 0 ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
  fi
  "$VENV/bin/python" -m pip install -q --no-cache-dir "${spec[@]}"
  echo "$want" > "$stamp"
}

install_packages
if [ "$RUNTIME" = 0 ]; then
  link_headers
  mount_tracefs
fi
[ "$MAKE_VENV" = 1 ] && make_venv
say "done"
