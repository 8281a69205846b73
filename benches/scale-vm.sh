#!/usr/bin/env bash
# benches/scale.sh inside a virtual machine, for a host that cannot hold the connections itself:
# one process holds a descriptor per connection, and a container without CAP_SYS_RESOURCE cannot
# raise its open-files hard limit to 100 000. The machine has 2 vCPUs (so scale.sh's pinning of
# server and load generator to one core each holds) and boots Debian's cloud kernel straight into
# an initramfs that holds only scale.sh, the release binaries and what they link: no disk, no
# network but loopback. Its open-files limit is 1 048 576; its results come back on a second
# serial port (saved to benches/scale-vm-results.jsonl) and the host prints the table.
#
# By default the machine is emulated (qemu's TCG, about 18 times slower than the host and far
# slower at page faults): memory per connection is the kernel's and the servers' own bookkeeping,
# the same emulated or not, but no time measured there means anything, so it runs
# `scale.sh --memory-only`. SCALE_VM_ACCEL=kvm runs every scenario under KVM instead, where
# /dev/kvm gives a machine at the host's speed (a nested one may not: on a 2-core cloud VM
# tried, the kernel took 90 s to decompress and then hung).
#
# Usage: benches/scale-vm.sh [--shequ-only] [N ...]    (default: 10000 50000 100000)
# Installs qemu-system-x86 and busybox-static, and downloads the kernel package, from Debian's
# archive. SCALE_VM_MEMORY sets the machine's memory (default 14G: 100 000 connections take about
# 2.5 GB in the Go hub and as much again in the load generator).
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("${@:-10000 50000 100000}")
memory=${SCALE_VM_MEMORY:-14G}
accel=${SCALE_VM_ACCEL:-tcg}
vm=target/scale-vm
case "$accel" in
  tcg) qemu_accel=(-accel tcg,thread=multi -cpu max) options="--memory-only" ;;
  kvm) qemu_accel=(-enable-kvm -cpu host,-arch-capabilities) options="" ;;
  *) echo "scale-vm: SCALE_VM_ACCEL is tcg or kvm" >&2; exit 2 ;;
esac
if ! command -v qemu-system-x86_64 >/dev/null || [ ! -x /bin/busybox ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends qemu-system-x86 busybox-static >/dev/null
fi
benches/scale.sh --build-only

# The kernel: the package that Debian's linux-image-cloud-amd64 points at, unpacked.
mkdir -p "$vm"
kernel=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
if [ ! -f "$vm/$kernel.vmlinuz" ]; then
  rm -rf "$vm/kernel" && mkdir -p "$vm/kernel"
  (cd "$vm/kernel" && apt-get download "$kernel" 2>/dev/null && dpkg -x ./*.deb unpacked)
  cp "$vm"/kernel/unpacked/boot/vmlinuz-* "$vm/$kernel.vmlinuz"
fi

# The initramfs: busybox, bash and taskset for scale.sh, the binaries, and the libraries they link.
root=$vm/root
rm -rf "$root"
mkdir -p "$root"/{bin,proc,sys,dev,tmp,work/benches,work/target/release,work/target/peers}
cp /bin/busybox "$root/bin/busybox"
binaries=(/bin/bash /usr/bin/taskset)
for b in shequ-chat shequ-loadgen shequ-floor; do
  cp "target/release/$b" "$root/work/target/release/"
  binaries+=("target/release/$b")
done
cp target/peers/go-hub "$root/work/target/peers/"
binaries+=(target/peers/go-hub)
cp /bin/bash /usr/bin/taskset "$root/bin/"
for lib in $(ldd "${binaries[@]}" 2>/dev/null | grep -o '/[^ ]*\.so[^ ]*' | sort -u); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
cp benches/scale.sh "$root/work/benches/"
cp -r configs "$root/work/"
echo "$options ${sizes[*]}" > "$root/work/arguments"
echo "$accel" > "$root/work/accel"
cat > "$root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
ip link set lo up
ulimit -H -n 1048576
ulimit -S -n 1048576
cd /work
echo "scale-vm: $(nproc) vCPUs, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB, open files $(ulimit -H -n)"
SCALE_EMULATED=$(cat accel) bash benches/scale.sh --no-build $(cat arguments) 2>&1
cat benches/scale-results.jsonl > /dev/ttyS1
poweroff -f
EOF
chmod +x "$root/init"
(cd "$root" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) > "$vm/initrd.gz"

out=benches/scale-vm-results.jsonl
: > "$vm/results.jsonl"
qemu-system-x86_64 "${qemu_accel[@]}" -smp 2 -m "$memory" -display none -monitor none \
  -no-reboot -kernel "$vm/$kernel.vmlinuz" -initrd "$vm/initrd.gz" \
  -append "console=ttyS0 quiet loglevel=3 panic=-1" \
  -serial stdio -serial "file:$vm/results.jsonl"
cp "$vm/results.jsonl" "$out"
python3 benches/scale_report.py "$out"
