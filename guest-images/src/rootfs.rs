//! The guest root filesystem: an ext4 image with busybox, fio and iperf3 (the
//! benchmark tools, with the shared libraries the installed Debian packages
//! link), and an `/sbin/init` driven by the kernel command line.
//!
//! The boot-test initramfs mounts it when the command line says `virga.root=DEV`
//! (the cloud kernel has virtio-blk as a module, so an initramfs must load it
//! first) and switches to it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{io_err, ImageError};

/// Printed by the rootfs init once it runs from the virtio-blk root.
pub const ROOT_MARKER: &str = "VIRGA-ROOT-OK";
/// The block benchmark: (name, fio arguments), run on a guest disk and natively.
pub const FIO_JOBS: &[(&str, &str)] = &[
    ("randread-4k-qd32", "--rw=randread --bs=4k --iodepth=32"),
    ("randread-4k-qd1", "--rw=randread --bs=4k --iodepth=1"),
    ("randwrite-4k-qd32", "--rw=randwrite --bs=4k --iodepth=32"),
    ("randwrite-4k-qd1", "--rw=randwrite --bs=4k --iodepth=1"),
    ("read-1m", "--rw=read --bs=1M --iodepth=8"),
    ("write-1m", "--rw=write --bs=1M --iodepth=8"),
];
/// Options every job shares; `DEV` is replaced by the device under test.
pub const FIO_COMMON: &str = "--filename=DEV --direct=1 --ioengine=libaio --time_based --runtime=3 --ramp_time=1 --size=192M --minimal";
/// Each job's terse result line is printed after this prefix and the job name.
pub const FIO_RESULT: &str = "VIRGA-FIO";

/// A shell loop running every job against `dev` and printing its results.
pub fn fio_script(fio: &str, dev: &str) -> String {
    let mut s = String::new();
    for (name, args) in FIO_JOBS {
        s.push_str(&format!(
            "echo \"{FIO_RESULT} {name} $({fio} --name={name} {args} {})\"\n",
            FIO_COMMON.replace("DEV", dev)
        ));
    }
    s
}

/// The network benchmark: (name, iperf3 client arguments), run in the guest
/// against an iperf3 server on the host side of the tap (169.254.100.1).
/// `-R` makes the host send.
pub const IPERF_JOBS: &[(&str, &str)] = &[
    ("guest-to-host-1", "-P 1"),
    ("guest-to-host-4", "-P 4"),
    ("host-to-guest-1", "-R -P 1"),
    ("host-to-guest-4", "-R -P 4"),
];
/// Each job's final receiver line is printed after this prefix and the job name.
pub const IPERF_RESULT: &str = "VIRGA-IPERF";
/// Guest and host addresses of the network benchmark (link-local, on the tap).
pub const IPERF_GUEST_ADDR: &str = "169.254.100.2";
pub const IPERF_HOST_ADDR: &str = "169.254.100.1";

/// A shell loop running every iperf3 job and printing its receiver summary.
fn iperf_script(iperf: &str) -> String {
    let mut s = String::new();
    for (name, args) in IPERF_JOBS {
        s.push_str(&format!(
            "    echo \"{IPERF_RESULT} {name} $({iperf} -c {IPERF_HOST_ADDR} -t 3 -O 1 -f m {args} 2>&1 | $bb grep receiver | $bb tail -1)\"\n"
        ));
    }
    s
}

/// Guest-to-guest benchmark (`virga.mode=peers-iperf`): each result line is
/// this prefix, the index of the NIC (and so of the datapath) it ran over,
/// the metric and the tool's summary line.
pub const PEERS_RESULT: &str = "VIRGA-PEERS";
/// Printed by the client once every peer answered, and once all rounds ran.
pub const PEERS_READY: &str = "virga-peers-iperf-ready";
pub const PEERS_DONE: &str = "virga-peers-iperf-done";

/// `virga.mode=peers-iperf`: the guest gives NIC `ethN` the Nth address of
/// `virga.addrs` (a /24, MTU 1450 as on the overlay, whatever the datapath),
/// then serves iperf3 (`virga.role=server`) or, as the client, runs
/// `virga.rounds` rounds against the Nth address of `virga.peers` over each
/// NIC in turn (every other round in reverse order, so no datapath always
/// runs first): TCP with one and four streams for `virga.secs` seconds, and
/// 200 adaptive pings.
fn peers_iperf_script() -> String {
    format!(
        r#"    $bb ip link set lo up
    n=0
    for a in $(arg virga.addrs | $bb tr , ' '); do
        $bb ip link set eth$n mtu 1450 up
        $bb ip addr add $a/24 dev eth$n
        n=$((n + 1))
    done
    peers=$(arg virga.peers)
    if [ "$(arg virga.role)" = server ]; then
        echo virga-peers-iperf-serving
        /usr/bin/iperf3 -s > /dev/null 2>&1
    else
        for p in $(echo $peers | $bb tr , ' '); do
            i=0
            until /usr/bin/iperf3 -c $p -t 1 > /dev/null 2>&1 || [ $i -ge 180 ]; do
                $bb sleep 1; i=$((i + 1))
            done
        done
        echo {PEERS_READY}
        secs=$(arg virga.secs)
        for r in $($bb seq $(arg virga.rounds)); do
            order=$($bb seq 0 $((n - 1)))
            [ $((r % 2)) = 0 ] && order=$($bb seq $((n - 1)) -1 0)
            for k in $order; do
                p=$(echo $peers | $bb cut -d, -f$((k + 1)))
                for s in 1 4; do
                    echo "{PEERS_RESULT} $k tcp_$s $(/usr/bin/iperf3 -c $p -t ${{secs:-5}} -O 1 -f m -P $s 2>&1 | $bb grep receiver | $bb tail -1)"
                done
                echo "{PEERS_RESULT} $k ping $($bb ping -A -c 200 -q $p 2>&1 | $bb grep round-trip)"
            done
        done
        echo {PEERS_DONE}
    fi
"#
    )
}

/// Free space left in the image for tests to write to.
const FREE_MIB: u64 = 64;
/// The benchmark tools put into the image (from the host's Debian packages).
pub const TOOLS: &[&str] = &["/usr/bin/fio", "/usr/bin/iperf3"];

fn init_script() -> String {
    let fio = fio_script("/usr/bin/fio", "/dev/vdb");
    let iperf = iperf_script("/usr/bin/iperf3");
    let peers = peers_iperf_script();
    format!(
        r#"#!/bin/busybox sh
# Virga rootfs init: report, then do what virga.mode says.
bb=/bin/busybox
$bb mount -t proc proc /proc
$bb mount -t sysfs sys /sys
$bb mount -t devtmpfs dev /dev
$bb mkdir -p /tmp
$bb mount -t tmpfs tmp /tmp
# The value of a `name=value` word of the command line.
arg() {{ for w in $($bb cat /proc/cmdline); do case "$w" in "$1="*) echo "${{w#*=}}";; esac; done; }}
ro=rw; $bb grep -q " / ext4 ro" /proc/mounts && ro=ro
echo "{ROOT_MARKER} root=$ro fio=$(/usr/bin/fio --version 2>&1) iperf3=$(/usr/bin/iperf3 --version 2>&1 | $bb head -1 | $bb cut -d' ' -f2)"
case " $($bb cat /proc/cmdline) " in
*" virga.mode=root-write "*)
    if echo "virga rootfs $($bb cat /proc/sys/kernel/random/boot_id)" > /data.txt 2>/dev/null && $bb sync; then
        echo "virga-root-wrote $($bb md5sum < /data.txt | $bb cut -d' ' -f1)"
    else
        echo "virga-root-write-failed"
    fi
    ;;
*" virga.mode=root-read "*)
    echo "virga-root-read $($bb md5sum < /data.txt | $bb cut -d' ' -f1)"
    ;;
*" virga.mode=fio "*)
{fio}    ;;
*" virga.mode=iperf "*)
    $bb ip link set lo up
    $bb ip link set eth0 up
    $bb ip addr add {IPERF_GUEST_ADDR}/24 dev eth0
    echo "virga-net-queues $($bb ls -d /sys/class/net/eth0/queues/rx-* | $bb wc -l)"
    # The host configures its side of the tap once the VMM created it.
    i=0
    until /usr/bin/iperf3 -c {IPERF_HOST_ADDR} -t 1 > /dev/null 2>&1 || [ $i -ge 60 ]; do
        $bb sleep 1; i=$((i + 1))
    done
{iperf}    ;;
*" virga.mode=peers-iperf "*)
{peers}    ;;
esac
$bb sync
# A clean filesystem for the next boot (a read-only disk cannot replay a journal).
$bb umount /tmp
$bb mount -o remount,ro / 2>/dev/null
$bb poweroff -f
"#
    )
}

/// Shared libraries of `binary` by absolute path (the loader included).
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(io_err(binary))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .map(PathBuf::from)
        .collect())
}

/// Builds `image` from busybox and the tools. Needs mkfs.ext4 (e2fsprogs).
pub fn build(busybox: &Path, image: &Path, staging: &Path) -> Result<(), ImageError> {
    let _ = std::fs::remove_dir_all(staging);
    let mut files: BTreeSet<PathBuf> = BTreeSet::new();
    for tool in TOOLS {
        let tool = Path::new(tool);
        if !tool.exists() {
            return Err(ImageError::Io {
                path: tool.to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "not installed (cargo xtask install adds fio and iperf3)",
                ),
            });
        }
        files.insert(tool.to_owned());
        files.extend(shared_libraries(tool)?);
    }
    for dir in ["bin", "sbin", "proc", "sys", "dev", "tmp", "root", "etc"] {
        let d = staging.join(dir);
        std::fs::create_dir_all(&d).map_err(io_err(&d))?;
    }
    let bb = staging.join("bin/busybox");
    std::fs::copy(busybox, &bb).map_err(io_err(&bb))?;
    let sh = staging.join("bin/sh");
    std::os::unix::fs::symlink("busybox", &sh).map_err(io_err(&sh))?;
    for f in &files {
        // Resolve links so the image holds the file itself under the linked name.
        let dest = staging.join(f.strip_prefix("/").unwrap_or(f));
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        std::fs::copy(f, &dest).map_err(io_err(f))?;
    }
    let init = staging.join("sbin/init");
    std::fs::write(&init, init_script()).map_err(io_err(&init))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))
        .map_err(io_err(&init))?;

    let used_mib = dir_size(staging).map_err(io_err(staging))? >> 20;
    let size = format!("{}M", used_mib + used_mib / 4 + FREE_MIB);
    let tmp = image.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "virga-root", "-d"])
        .arg(staging)
        .arg(&tmp)
        .arg(&size)
        .output()
        .map_err(io_err(Path::new("mkfs.ext4")))?;
    if !out.status.success() {
        return Err(ImageError::Io {
            path: image.to_owned(),
            source: std::io::Error::other(format!(
                "mkfs.ext4 failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        });
    }
    std::fs::rename(&tmp, image).map_err(io_err(image))?;
    let _ = std::fs::remove_dir_all(staging);
    Ok(())
}

fn dir_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_reports_and_dispatches() {
        let s = init_script();
        assert!(s.contains(ROOT_MARKER));
        assert!(s.contains("virga.mode=root-write"));
        assert!(s.contains("virga.mode=root-read"));
        assert_eq!(s.matches(FIO_RESULT).count(), FIO_JOBS.len());
        assert!(s.contains("--filename=/dev/vdb"));
        assert!(s.contains("virga.mode=iperf"));
        assert_eq!(s.matches(IPERF_RESULT).count(), IPERF_JOBS.len());
        assert!(s.contains("-c 169.254.100.1 -t 3 -O 1 -f m -R -P 4"));
        assert!(s.contains("virga.mode=peers-iperf"));
        assert_eq!(s.matches(PEERS_RESULT).count(), 2);
        assert!(s.contains("-t ${secs:-5} -O 1 -f m -P $s"));
    }
}
