#!/bin/sh
# Firecracker behind the flags virga-boottime gives a VMM, so that it boots
# as the baseline of an interleaved comparison with the same kernel,
# initramfs, command line, vCPUs and RAM:
#
#   FIRECRACKER=/path/to/firecracker virga-boottime compare \
#       --kernel vmlinux --initramfs initrd.cpio --marker login: \
#       --vmm-arg=--no-rng --baseline-vmm benches/peers/firecracker-as-vmm.sh
#
# (--no-rng: Virga without devices, as this Firecracker has none.) The
# kernel and initramfs only: a disk image is refused.
set -eu
fc=${FIRECRACKER:-firecracker}
kernel= initramfs= cmdline= vcpus=1 memory=256 socket=
while [ $# -gt 0 ]; do
    case "$1" in
    --kernel) kernel=$2; shift 2 ;;
    --initramfs) initramfs=$2; shift 2 ;;
    --cmdline) cmdline=$2; shift 2 ;;
    --vcpus) vcpus=$2; shift 2 ;;
    --memory-mib) memory=$2; shift 2 ;;
    --api-socket) socket=$2; shift 2 ;;
    --disk) echo "firecracker-as-vmm: disks are not passed on" >&2; exit 2 ;;
    --serial) shift 2 ;; # Firecracker's serial console is its stdout
    *) shift ;;          # Virga's own flags (--no-rng, --jail)
    esac
done
if [ -z "$kernel" ] || [ -z "$socket" ]; then
    echo "firecracker-as-vmm: --kernel and --api-socket are needed" >&2
    exit 2
fi
initrd=
[ -n "$initramfs" ] && initrd=", \"initrd_path\": \"$initramfs\""
config=$socket.firecracker.json
cat > "$config" <<END
{"boot-source": {"kernel_image_path": "$kernel"$initrd, "boot_args": "$cmdline"},
 "drives": [], "machine-config": {"vcpu_count": $vcpus, "mem_size_mib": $memory}}
END
# virga-boottime reads the VMM's counters from the API socket once it
# exists; Firecracker has no such socket here, and a plain file answers
# nothing at once.
: > "$socket"
exec "$fc" --no-api --config-file "$config" --level Error
