#!/bin/sh
# The guest's first process after the initramfs, on the host's root filesystem (read-only,
# over 9p): mounts what a node has (proc, sysfs, tracefs, debugfs, bpffs, cgroup2, writable
# /tmp and /run), puts this kernel's headers where bcc looks, runs the command the host left
# in the results folder, and powers off.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm 2>/dev/null
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
mount -t tmpfs tmpfs /sys/fs/cgroup && mkdir -p /sys/fs/cgroup/unified \
    && mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified
# Writable, empty /tmp, /run, /var/tmp and /var/log. The checkout may live under one of them
# (a CI clone): it is bound aside first and bound back at its own path in the new tmpfs.
mount --bind "$TO_KEEP" /mnt
for dir in /tmp /run /var/tmp /var/log; do mount -t tmpfs tmpfs "$dir"; done
if [ ! -d "$TO_KEEP" ]; then
    mkdir -p "$TO_KEEP" && mount --bind /mnt "$TO_KEEP"
fi
mkdir -p "$TO_RESULTS" 2>/dev/null
mount -t 9p -o trans=virtio,version=9p2000.L results "$TO_RESULTS"
# bcc compiles against /lib/modules/$(uname -r)/build: this kernel's own headers.
mount --bind "$TO_HEADERS/usr/src" /usr/src
mount -t tmpfs tmpfs /usr/lib/modules
mkdir -p "/usr/lib/modules/$TO_RELEASE"
for link in build source; do
    target=$(readlink "$TO_HEADERS/usr/lib/modules/$TO_RELEASE/$link" 2>/dev/null \
        || readlink "$TO_HEADERS/lib/modules/$TO_RELEASE/$link" 2>/dev/null)
    [ -n "$target" ] && ln -s "$target" "/usr/lib/modules/$TO_RELEASE/$link"
done
ip link set lo up
hostname guest
export HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
echo "guest: kernel $(uname -r) up"
sh "$TO_RESULTS/command" > "$TO_RESULTS/output.log" 2>&1
echo $? > "$TO_RESULTS/exit_status"
dmesg > "$TO_RESULTS/dmesg.log"
sync
umount "$TO_RESULTS"
echo o > /proc/sysrq-trigger
sleep 10
