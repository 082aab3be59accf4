"""Real distribution kernels booted under qemu, running this checkout's kernel suite.

Each kernel comes from Debian's archive (a suite of its own, with its own apt lists kept apart
from the machine's), unpacked with its headers into a cache keyed by its version. The guest
boots from a small initramfs (busybox and the 9p modules of that kernel), mounts the host's
root filesystem read-only over virtio-9p and runs this checkout, its virtual environment and
the host's bcc and Python there, under the guest's kernel: nothing is built per kernel but the
initramfs. Results come back through a second, writable 9p share.
"""
