//! The boot-test initramfs: busybox, the kernel's virtio modules, and an `/init`
//! that loads them, prints one marker line and acts as the command line says.
//!
//! `virga.delay_ms=N` waits N ms before the marker (a known slowdown for the
//! boot-time tool's checks).
//!
//! `virga.root=DEV` mounts DEV (ext4) and switches to it instead (see
//! [`crate::rootfs`]). Otherwise `virga.mode=` picks what happens after the marker:
//! - (absent): power off at once;
//! - `ticks`: print `virga-tick N` every 200 ms until Ctrl+Alt+Del (SIGINT to init),
//!   then power off;
//! - `reboot`: reboot at once;
//! - `devices`: list PCI devices and the hardware RNG, read from it, power off;
//! - `disk-write`: write 4 MiB of random data to /dev/vda at 1 MiB, fsync, print
//!   its md5 (or that the write failed), power off;
//! - `disk-read`: print the md5 of the same 4 MiB of /dev/vda, power off;
//! - `net`: configure eth0, ping and download from the host, serve a file back,
//!   then wait for Ctrl+Alt+Del;
//! - `flood`: print [`FLOOD_LINES`] numbered lines of every printable character
//!   (see [`flood_line`]), then `virga-flood-done`, and power off;
//! - `cloud`: what a cloud image's boots check, in the shape cloud-init reads
//!   them: mount the config drive (the vfat disk labelled `config-2`) and
//!   print the hostname, keys and user data it holds; count this boot in a file
//!   on the root disk's last partition (ext4); reboot after the first boot,
//!   wait quietly after later ones; power off on the ACPI power button (or
//!   Ctrl+Alt+Del).
//!
//! [`ON_DEMAND_MODULES`] are packed too but loaded only by the modes that
//! need them, so the other boots do not pay for them.

use std::path::Path;

use crate::cpio_archive::Archive;
use crate::modules::{module_name, ModuleIndex};
use crate::{io_err, ImageError};

/// Start of the line the init prints once the kernel reached userspace:
/// `VIRGA-BOOT-OK uptime_s=1.23 cpus=2 memtotal_kib=223516`.
pub const BOOT_MARKER: &str = "VIRGA-BOOT-OK";

/// How many lines `virga.mode=flood` prints.
pub const FLOOD_LINES: usize = 500;
/// How many records `virga.mode=peers` writes on a blank volume, each
/// flushed before it is acknowledged (`virga-peers-rec N`).
pub const PEER_RECORDS: usize = 400;
/// Every printable ASCII character but the shell's single quote.
const FLOOD_PAYLOAD: &str = concat!(
    "!\"#$%&()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~"
);

/// Line `i` of `virga.mode=flood`, without its newline.
pub fn flood_line(i: usize) -> String {
    format!("virga-flood {i} {FLOOD_PAYLOAD} {i}")
}

/// Packed, loaded by `cloud` only: FAT for the config drive, with the code
/// page and character set vfat mounts with by default; the ACPI power
/// button and its event device.
pub const ON_DEMAND_MODULES: &[&str] = &["vfat", "nls_cp437", "nls_ascii", "button", "evdev"];

fn init_script(modules: &[String], on_demand: &[String]) -> String {
    format!(
        r#"#!/bin/busybox sh
# Virga boot-test init: load virtio modules, report, then do what virga.mode says.
bb=/bin/busybox
$bb mount -t proc proc /proc
for m in {modules}; do $bb insmod /lib/modules/$m.ko; done
root=$($bb sed -n 's/.*virga\.root=\([^ ]*\).*/\1/p' /proc/cmdline)
if [ -n "$root" ]; then
    # Root on a virtio disk: its driver is a module, loaded above; switch to it.
    $bb mount -t devtmpfs dev /dev
    $bb mkdir -p /newroot
    opts=rw
    # A read-only disk: mount read-only and never touch the journal.
    $bb mount -t sysfs sys /sys
    [ "$($bb cat /sys/block/${{root#/dev/}}/ro 2>/dev/null)" = 1 ] && opts=ro,noload
    if $bb mount -t ext4 -o $opts "$root" /newroot; then
        $bb umount /dev
        $bb umount /sys
        $bb umount /proc
        exec $bb switch_root /newroot /sbin/init
    fi
    echo "virga-root-mount-failed $root"
    $bb poweroff -f
fi
# virga.delay_ms=N: a known slowdown before the marker, which the boot-time
# tool's own checks must find.
delay=$($bb sed -n 's/.*virga\.delay_ms=\([0-9]*\).*/\1/p' /proc/cmdline)
[ -n "$delay" ] && $bb usleep $((delay * 1000))
read up _ < /proc/uptime
cpus=$($bb grep -c ^processor /proc/cpuinfo)
mem=$($bb awk '/^MemTotal:/ {{print $2}}' /proc/meminfo)
echo "{BOOT_MARKER} uptime_s=$up cpus=$cpus memtotal_kib=$mem"
case " $($bb cat /proc/cmdline) " in
*" virga.mode=ticks "*)
    # As real inits do: Ctrl+Alt+Del signals init instead of rebooting at once.
    echo 0 > /proc/sys/kernel/ctrl-alt-del
    trap 'echo virga-shutdown-requested; $bb poweroff -f' INT TERM
    i=0
    while :; do
        i=$((i + 1))
        echo "virga-tick $i"
        $bb sleep 0.2
    done
    ;;
*" virga.mode=reboot "*)
    $bb reboot -f
    ;;
*" virga.mode=disk-write "*|*" virga.mode=disk-read "*)
    $bb mount -t sysfs sys /sys
    $bb mount -t devtmpfs dev /dev
    echo "virga-disks $(cd /sys/block && echo vd*)"
    echo "virga-nics $(cd /sys/class/net && echo eth*)"
    echo "virga-disk-serial $($bb cat /sys/block/vda/serial 2>/dev/null)"
    echo "virga-disk-ro $($bb cat /sys/block/vda/ro 2>/dev/null)"
    if $bb grep -q "virga.mode=disk-write" /proc/cmdline; then
        $bb mkdir -p /tmp
        $bb dd if=/dev/urandom of=/tmp/pattern bs=64k count=64 2>/dev/null
        if $bb dd if=/tmp/pattern of=/dev/vda bs=64k seek=16 conv=fsync 2>/dev/null; then
            echo "virga-disk-written $($bb md5sum < /tmp/pattern | $bb cut -d' ' -f1)"
        else
            echo "virga-disk-write-failed"
        fi
    else
        read t0 _ < /proc/uptime
        sum=$($bb dd if=/dev/vda bs=64k skip=16 count=64 iflag=direct 2>/dev/null | $bb md5sum | $bb cut -d' ' -f1)
        read t1 _ < /proc/uptime
        echo "virga-disk-read $sum"
        echo "virga-disk-read-seconds $t0 $t1"
    fi
    $bb sync
    $bb poweroff -f
    ;;
*" virga.mode=writer "*)
    # Guest side of the VMM crash trials: count the records on /dev/vda
    # (block n holds "virga-rec n end"; the first block without its record
    # ends them), then go on writing records, each flushed (dd's fsync is
    # a virtio FLUSH) before it is acknowledged on the console. The host
    # kills the VMM at some moment and checks, at the next boot, that every
    # acknowledged record is there.
    $bb mount -t sysfs sys /sys
    $bb mount -t devtmpfs dev /dev
    # Counted 4 MiB (1024 records) at a time: one read per chunk, not per
    # record, keeps a boot short however many trials came before.
    n=0
    chunk=0
    while :; do
        c=$($bb dd if=/dev/vda bs=1M skip=$((chunk * 4)) count=4 iflag=direct 2>/dev/null \
            | $bb strings -n 9 \
            | $bb awk -v n=$n '$1 == "virga-rec" && $2 == n && $3 == "end" {{ n++ }} END {{ print n }}')
        [ "${{c:-$n}}" = "$n" ] && break
        n=$c
        chunk=$((chunk + 1))
    done
    echo "virga-writer-found $n"
    while :; do
        $bb printf "virga-rec %s end" $n | $bb dd of=/dev/vda bs=4096 seek=$n conv=sync,fsync 2>/dev/null || break
        echo "virga-writer-ack $n"
        n=$((n + 1))
    done
    echo "virga-writer-failed $n"
    $bb poweroff -f
    ;;
*" virga.mode=net "*)
    # Guest side of the network test: address 169.254.100.2 on eth0, fetch the
    # host's blob, serve 16 MiB of our own, wait for Ctrl+Alt+Del.
    echo 0 > /proc/sys/kernel/ctrl-alt-del
    trap '$bb poweroff -f' INT TERM
    $bb mount -t sysfs sys /sys
    $bb mount -t devtmpfs dev /dev
    $bb mkdir -p /tmp /www
    $bb ip link set lo up
    $bb ip link set eth0 up
    $bb ip addr add 169.254.100.2/24 dev eth0
    echo "virga-net-mac $($bb cat /sys/class/net/eth0/address)"
    echo "virga-net-mtu $($bb cat /sys/class/net/eth0/mtu)"
    echo "virga-net-queues $($bb ls -d /sys/class/net/eth0/queues/rx-* | $bb wc -l)"
    if $bb ping -c 3 -W 5 169.254.100.1 > /dev/null; then echo virga-net-ping-ok; else echo virga-net-ping-failed; fi
    echo "virga-net-download $($bb wget -q -O - http://169.254.100.1:8080/blob | $bb md5sum | $bb cut -d' ' -f1)"
    $bb dd if=/dev/urandom of=/www/upload bs=1M count=16 2>/dev/null
    echo "virga-net-upload-md5 $($bb md5sum < /www/upload | $bb cut -d' ' -f1)"
    $bb httpd -p 8080 -h /www
    echo virga-net-serving
    while :; do $bb sleep 1; done
    ;;
*" virga.mode=hotplug "*)
    # Guest side of the hotplug tests: report the NICs and disks whenever
    # they change; give each new NIC its address (169.254.10N.2 for ethN)
    # and ping the host at .1 through it; read the first 16 bytes of each
    # new disk; report the disks' sizes (in sectors) when they change.
    echo 0 > /proc/sys/kernel/ctrl-alt-del
    trap '$bb poweroff -f' INT TERM
    $bb mount -t sysfs sys /sys
    $bb mount -t devtmpfs dev /dev
    seen=
    disks=
    sizes=
    echo virga-hotplug-ready
    while :; do
        now=$(cd /sys/block && echo vd*)
        if [ "$now" != "$disks" ]; then
            echo "virga-hotplug-disks $now"
            for d in $now; do
                [ -e /sys/block/$d ] || continue
                case " $disks " in *" $d "*) continue ;; esac
                i=0; while [ ! -e /dev/$d ] && [ $i -lt 50 ]; do $bb sleep 0.1; i=$((i + 1)); done
                echo "virga-hotplug-disk $d $($bb dd if=/dev/$d bs=16 count=1 2>/dev/null)"
            done
            disks=$now
        fi
        now=$(for d in $disks; do [ -e /sys/block/$d/size ] && echo -n "$d=$($bb cat /sys/block/$d/size) "; done)
        if [ "$now" != "$sizes" ]; then
            echo "virga-hotplug-sizes $now"
            sizes=$now
        fi
        now=$(cd /sys/class/net && echo eth*)
        if [ "$now" != "$seen" ]; then
            echo "virga-hotplug-nics $now"
            for n in $now; do
                [ -e /sys/class/net/$n ] || continue
                case " $seen " in *" $n "*) continue ;; esac
                i=${{n#eth}}
                $bb ip link set $n up
                $bb ip addr add 169.254.10$i.2/24 dev $n
                r=failed; $bb ping -c 2 -W 5 169.254.10$i.1 > /dev/null && r=ok
                echo "virga-hotplug-ping $n $($bb cat /sys/class/net/$n/address) $r"
            done
            seen=$now
        fi
        $bb sleep 0.2
    done
    ;;
*" virga.mode=peers "*)
    # Guest side of the two-host test: an address by DHCP on eth0, a blob
    # served over HTTP; then, for 40 rounds, every other address of
    # 10.0.0.2-4 that answers a ping is reported, with the checksum of the
    # blob fetched from it.
    $bb mount -t sysfs sys /sys
    $bb mount -t devtmpfs dev /dev
    $bb mkdir -p /tmp /www
    $bb cat > /tmp/dhcp.sh <<'EOF'
#!/bin/busybox sh
[ "$1" = bound ] || exit 0
/bin/busybox ip addr add $ip/$mask dev $interface
EOF
    $bb chmod +x /tmp/dhcp.sh
    # Served before the address is taken: a peer that can ping this guest
    # finds its server up.
    $bb dd if=/dev/urandom of=/www/blob bs=64k count=64 2>/dev/null
    $bb httpd -p 8080 -h /www
    $bb ip link set lo up
    $bb ip link set eth0 up
    $bb udhcpc -i eth0 -q -n -t 30 -T 2 -s /tmp/dhcp.sh > /dev/null 2>&1 || echo virga-peers-no-address
    me=$($bb ip -4 -o addr show dev eth0 | $bb awk '{{print $4}}' | $bb cut -d/ -f1)
    echo "virga-peers-address ${{me:-none}}"
    echo "virga-peers-serving $($bb md5sum < /www/blob | $bb cut -d' ' -f1)"
    reached=
    seen=
    i=0
    while [ $i -lt 40 ]; do
        for n in 2 3 4; do
            ip=10.0.0.$n
            [ "$ip" = "$me" ] && continue
            case " $seen " in *" $ip "*) continue ;; esac
            if $bb ping -c 1 -W 1 $ip > /dev/null 2>&1; then
                case " $reached " in
                *" $ip "*) ;;
                *) echo "virga-peers-reached $ip"; reached="$reached $ip" ;;
                esac
                # A blob not fetched whole is fetched again next round.
                if $bb wget -q -O /tmp/fetched http://$ip:8080/blob 2>/dev/null; then
                    echo "virga-peers-fetched $ip $($bb md5sum < /tmp/fetched | $bb cut -d' ' -f1)"
                    seen="$seen $ip"
                fi
            fi
        done
        i=$((i + 1))
        $bb sleep 1
    done
    echo virga-peers-done
    # Then disks plugged later (volumes): each new one's first 16 bytes
    # are reported, with the records after them. One that starts with
    # zeros gets a marker written and flushed, for another guest to read
    # after it moves there, then records (block n holds "virga-rec n end",
    # each flushed before it is acknowledged): the host kills the storage
    # server under them. A disk that grows (a volume extended in use) gets
    # a marker of its own at its start, flushed, and says so.
    disks=
    while :; do
        now=$(cd /sys/block && echo vd*)
        for d in $now; do
            [ -e /sys/block/$d ] || continue
            case " $disks " in *" $d "*) continue ;; esac
            i=0; while [ ! -e /dev/$d ] && [ $i -lt 50 ]; do $bb sleep 0.1; i=$((i + 1)); done
            first=$($bb dd if=/dev/$d bs=16 count=1 iflag=direct 2>/dev/null | $bb tr -d '\000')
            recs=$($bb dd if=/dev/$d bs=4096 skip=1 count={peer_records} iflag=direct 2>/dev/null \
                | $bb strings -n 9 \
                | $bb awk 'BEGIN {{ n = 1 }} $1 == "virga-rec" && $2 == n && $3 == "end" {{ n++ }} END {{ print n - 1 }}')
            echo "virga-peers-disk $d [$first] records ${{recs:-0}}"
            if [ -z "$first" ]; then
                $bb printf virga-over-nbd-1 | $bb dd of=/dev/$d conv=fsync 2>/dev/null \
                    && echo "virga-peers-disk-written $d"
                n=1
                while [ $n -le {peer_records} ]; do
                    $bb printf "virga-rec %s end" $n | $bb dd of=/dev/$d bs=4096 seek=$n conv=sync,fsync 2>/dev/null || break
                    echo "virga-peers-rec $n"
                    n=$((n + 1))
                    # At least 8 s of records, however fast the disk: the
                    # host's kill (polled each second) must come mid-stream.
                    $bb usleep 20000
                done
                echo "virga-peers-recs-end $((n - 1))"
            fi
        done
        # (sizes kept by the disk's serial: another volume may come back
        # under the same name)
        for d in $now; do
            k=$($bb cat /sys/block/$d/serial 2>/dev/null | $bb tr -c 'a-zA-Z0-9' _)
            s=$($bb cat /sys/block/$d/size 2>/dev/null)
            eval "was=\${{size_$k:-$s}}"
            if [ -n "$s" ] && [ "$s" != "$was" ]; then
                $bb printf virga-grown-2ok! | $bb dd of=/dev/$d conv=fsync 2>/dev/null \
                    && echo "virga-peers-disk-grown $d $s"
            fi
            eval "size_$k=$s"
        done
        disks=$now
        $bb sleep 0.5
    done
    ;;
*" virga.mode=flood "*)
    i=0
    while [ $i -lt {flood_lines} ]; do
        $bb printf 'virga-flood %s %s %s\n' $i '{flood_payload}' $i
        i=$((i + 1))
    done
    echo virga-flood-done
    $bb poweroff -f
    ;;
*" virga.mode=cloud "*)
    echo 0 > /proc/sys/kernel/ctrl-alt-del
    trap 'echo virga-shutdown-requested; $bb poweroff -f' INT TERM
    $bb mount -t sysfs sys /sys
    $bb mount -t devtmpfs dev /dev
    for m in {on_demand}; do $bb insmod /lib/modules/$m.ko 2>/dev/null; done
    # The ACPI power button powers off, as systemd-logind makes it do.
    for e in /sys/class/input/event*; do
        if [ "$($bb cat $e/device/name 2>/dev/null)" = "Power Button" ]; then
            ( $bb head -c 24 /dev/input/${{e##*/}} > /dev/null && echo virga-power-button && $bb poweroff -f ) &
        fi
    done
    $bb mkdir -p /cd /disk
    # Found by its label, as cloud-init finds it.
    cd=$($bb findfs LABEL=config-2 2>/dev/null)
    $bb mount -t vfat -o ro "$cd" /cd
    echo "virga-cloud-config-drive ${{cd:-none}}"
    meta=/cd/openstack/latest/meta_data.json
    echo "virga-cloud-hostname $($bb sed -n 's/.*"hostname": *"\([^"]*\)".*/\1/p' $meta)"
    echo "virga-cloud-keys $($bb grep -o '"public_keys": *{{[^}}]*}}' $meta)"
    echo "virga-cloud-user-data $($bb md5sum < /cd/openstack/latest/user_data | $bb cut -d' ' -f1)"
    $bb umount /cd
    # The flavor's ephemeral disk and swap, found as cloud-init finds them:
    # by label, and by the swap signature (no blkid in this busybox).
    swap=
    for d in /dev/vd[a-z]; do
        [ "$($bb dd if=$d bs=1 skip=4086 count=10 2>/dev/null)" = SWAPSPACE2 ] && swap="$swap$d"
    done
    echo "virga-cloud-ephemeral $($bb findfs LABEL=ephemeral0 2>/dev/null || echo none) swap=$swap"
    part=$(cd /sys/block/vda && $bb ls -d vda* | $bb tail -n 1)
    n=0
    if $bb mount -t ext4 /dev/$part /disk; then
        n=$(($($bb cat /disk/virga-boots 2>/dev/null || echo 0) + 1))
        echo $n > /disk/virga-boots
        $bb umount /disk
    fi
    $bb sync
    echo "virga-cloud-boot $n root=$part sectors=$($bb cat /sys/block/vda/size)"
    [ $n = 1 ] && $bb reboot -f
    while :; do $bb sleep 1; done
    ;;
*" virga.mode=devices "*)
    $bb mount -t sysfs sys /sys
    $bb mount -t devtmpfs dev /dev
    for d in /sys/bus/pci/devices/*; do
        [ -e "$d/vendor" ] && echo "virga-pci $($bb basename $d) $($bb cat $d/vendor):$($bb cat $d/device) class=$($bb cat $d/class) driver=$($bb basename "$($bb readlink $d/driver)")"
    done
    d=/sys/class/dmi/id
    echo "virga-dmi $($bb cat $d/sys_vendor 2>/dev/null)|$($bb cat $d/product_name 2>/dev/null)|$($bb cat $d/product_family 2>/dev/null)|$($bb cat $d/bios_vendor 2>/dev/null)"
    echo "virga-rng-current $($bb cat /sys/class/misc/hw_random/rng_current 2>/dev/null)"
    echo "virga-rng-bytes $($bb head -c 4096 /dev/hwrng 2>/dev/null | $bb wc -c)"
    $bb poweroff -f
    ;;
*)
    $bb poweroff -f
    ;;
esac
"#,
        modules = modules.join(" "),
        on_demand = on_demand.join(" "),
        flood_lines = FLOOD_LINES,
        peer_records = PEER_RECORDS,
        flood_payload = FLOOD_PAYLOAD,
    )
}

/// Builds the archive in memory (a few MiB).
pub fn boot_test(
    busybox: &Path,
    index: &ModuleIndex,
    wanted: &[&str],
) -> Result<Vec<u8>, ImageError> {
    let order = index.load_order(wanted)?;
    let names: Vec<String> = order
        .iter()
        .map(|p| module_name(&p.to_string_lossy()))
        .collect();
    // What the on-demand modules need beyond the modules every boot loads.
    // (One built into the kernel needs no loading.)
    let on_demand: Vec<&str> = ON_DEMAND_MODULES
        .iter()
        .copied()
        .filter(|m| index.has(m))
        .collect();
    let extra: Vec<_> = index
        .load_order(&on_demand)?
        .into_iter()
        .filter(|p| !order.contains(p))
        .collect();
    let extra_names: Vec<String> = extra
        .iter()
        .map(|p| module_name(&p.to_string_lossy()))
        .collect();

    let build = || -> std::io::Result<Vec<u8>> {
        let mut a = Archive::new(Vec::new());
        let mut existing = Vec::new();
        for d in ["/bin", "/proc", "/sys", "/dev", "/lib/modules"] {
            a.dirs(&mut existing, d)?;
        }
        a.host_file("/bin/busybox", busybox)?;
        for (path, name) in order
            .iter()
            .zip(&names)
            .chain(extra.iter().zip(&extra_names))
        {
            a.host_file(&format!("/lib/modules/{name}.ko"), path)?;
        }
        a.file("/init", 0o755, init_script(&names, &extra_names).as_bytes())?;
        a.finish()
    };
    build().map_err(io_err(busybox))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_loads_modules_in_order_and_prints_the_marker() {
        let s = init_script(&["virtio_ring".into(), "virtio".into()], &["vfat".into()]);
        assert!(s.starts_with("#!/bin/busybox sh\n"));
        assert!(s.contains("for m in virtio_ring virtio; do"));
        assert!(s.contains(&format!("echo \"{BOOT_MARKER} uptime_s=")));
        assert!(s.contains("virga.mode=ticks"));
        assert!(
            s.contains("for m in vfat; do"),
            "on demand, in the cloud mode"
        );
    }
}
