//! The VMM's configuration: the JSON file and the `--disk`/`--net` flag values,
//! the untrusted input hostd and operators hand it.
//!
//! Checked: no panic; a parsed flag value renders back to a string that parses
//! to the same thing; a parsed JSON file survives a serialize/parse round trip;
//! validation either fails naming a known field or yields a configuration
//! within every documented bound.

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Map, Value};

use crate::config::{
    ConfigError, ConfigFile, DiskConfig, NetConfig, VmConfig, MAX_CMDLINE_LEN, MAX_DISKS,
    MAX_DISK_QUEUES, MAX_NICS, MAX_VCPUS, MIN_MEMORY_MIB, MIN_VCPUS,
};
use crate::virtio::net::{VhostMode, MAX_QUEUE_PAIRS};

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if ok {
        Ok(())
    } else {
        Err(TestCaseError::fail(what()))
    }
}

/// A flag value: key=value parts, mostly known keys and plausible values.
fn flag(keys: &'static [&'static str]) -> impl Strategy<Value = String> {
    let key = prop_oneof![6 => prop::sample::select(keys), 1 => Just("bogus"), 1 => Just("")];
    let value = prop_oneof![
        Just("on".to_owned()),
        Just("off".to_owned()),
        Just("auto".to_owned()),
        (0u64..40).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        Just("-1".to_owned()),
        Just("52:54:00:12:34:56".to_owned()),
        Just("3:4:5".to_owned()),
        "[a-z0-9:=/._ -]{0,24}",
        "\\PC{0,8}",
    ];
    let part = prop_oneof![
        8 => (key, value).prop_map(|(k, v)| format!("{k}={v}")),
        1 => "[^,]{0,8}",
    ];
    prop::collection::vec(part, 0..6).prop_map(|parts| parts.join(","))
}

fn on(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

fn render_disk(d: &DiskConfig) -> String {
    let mut s = format!(
        "path={},readonly={},direct={}",
        d.path.display(),
        on(d.read_only),
        on(d.direct)
    );
    if let Some(v) = &d.serial {
        s += &format!(",serial={v}");
    }
    if let Some(v) = d.queues {
        s += &format!(",queues={v}");
    }
    if let Some(v) = d.rate_limit.bytes_per_sec {
        s += &format!(",bw={v}");
    }
    if let Some(v) = d.rate_limit.ops_per_sec {
        s += &format!(",iops={v}");
    }
    s
}

fn render_net(n: &NetConfig) -> String {
    let mut parts = Vec::new();
    if let Some(t) = &n.tap {
        parts.push(format!("tap={t}"));
    }
    if !n.fds.is_empty() {
        let fds: Vec<String> = n.fds.iter().map(i32::to_string).collect();
        parts.push(format!("fd={}", fds.join(":")));
    }
    if let Some(q) = n.queues {
        parts.push(format!("queues={q}"));
    }
    if let Some(m) = &n.mac {
        parts.push(format!("mac={m}"));
    }
    let vhost = match n.vhost {
        VhostMode::Auto => "auto",
        VhostMode::On => "on",
        VhostMode::Off => "off",
    };
    parts.push(format!("vhost={vhost}"));
    if let Some(v) = n.rate_limit.bytes_per_sec {
        parts.push(format!("bw={v}"));
    }
    if let Some(v) = n.rate_limit.ops_per_sec {
        parts.push(format!("pps={v}"));
    }
    parts.join(",")
}

const DISK_KEYS: &[&str] = &[
    "path",
    "readonly",
    "read_only",
    "direct",
    "serial",
    "queues",
    "bw",
    "iops",
];
const NET_KEYS: &[&str] = &["tap", "fd", "queues", "mac", "vhost", "bw", "pps"];
const FILE_KEYS: &[&str] = &[
    "kernel",
    "initramfs",
    "cmdline",
    "vcpus",
    "memory_mib",
    "serial",
    "api_socket",
    "on_reboot",
    "rng",
    "disks",
    "nets",
    "mode",
    "path",
    "read_only",
    "direct",
    "queues",
    "rate_limit",
    "bytes_per_sec",
    "ops_per_sec",
    "tap",
    "fds",
    "mac",
    "vhost",
    "bogus",
];

/// JSON shaped like a config file: objects keyed by its field names, values of
/// every JSON type, and the paths `KERNEL`/`DISK` stand for real files.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (0u64..70).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(vec![
            "stdout",
            "file",
            "pty",
            "off",
            "exit",
            "restart",
            "auto",
            "on",
            "KERNEL",
            "DISK",
            "/nonexistent/x",
            "/tmp/vmm.sock",
            "52:54:00:12:34:56",
            "01:00:00:00:00:00",
            "console=ttyS0",
            "vtap0",
            "",
        ])
        .prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(FILE_KEYS), inner), 0..6).prop_map(|kv| {
                Value::Object(
                    kv.into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    })
}

/// Replaces the KERNEL/DISK placeholders with real files.
fn substitute(v: &mut Value, kernel: &str, disk: &str) {
    match v {
        Value::String(s) if s == "KERNEL" => *s = kernel.to_owned(),
        Value::String(s) if s == "DISK" => *s = disk.to_owned(),
        Value::Array(a) => a.iter_mut().for_each(|v| substitute(v, kernel, disk)),
        Value::Object(o) => o.values_mut().for_each(|v| substitute(v, kernel, disk)),
        _ => {}
    }
}

const FIELDS: &[&str] = &[
    "kernel",
    "initramfs",
    "cmdline",
    "vcpus",
    "memory_mib",
    "serial.path",
    "api_socket",
    "jail",
    "disks",
    "disks.path",
    "disks.serial",
    "disks.rate_limit",
    "disks.queues",
    "nets",
    "nets.tap",
    "nets.fds",
    "nets.queues",
    "nets.rate_limit",
    "nets.mac",
];

fn validated(c: &VmConfig) -> Result<(), TestCaseError> {
    check((MIN_VCPUS..=MAX_VCPUS).contains(&c.vcpus), || {
        format!("vcpus {}", c.vcpus)
    })?;
    check(c.memory_mib >= MIN_MEMORY_MIB, || {
        format!("memory {}", c.memory_mib)
    })?;
    check(c.cmdline.len() < MAX_CMDLINE_LEN, || {
        "cmdline too long".into()
    })?;
    check(
        c.disks.len() <= MAX_DISKS && c.nets.len() <= MAX_NICS,
        || "too many devices".into(),
    )?;
    for d in &c.disks {
        check(
            d.queues.is_some_and(|q| (1..=MAX_DISK_QUEUES).contains(&q)),
            || format!("disk queues {:?}", d.queues),
        )?;
    }
    for n in &c.nets {
        check(
            n.queues.is_some_and(|q| (1..=MAX_QUEUE_PAIRS).contains(&q)),
            || format!("net queues {:?}", n.queues),
        )?;
    }
    Ok(())
}

#[test]
fn config() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, b"\x7fELF\x02\x01\x01").unwrap();
    let disk = dir.path().join("disk.raw");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let (kernel, disk) = (kernel.display().to_string(), disk.display().to_string());
    let input = (flag(DISK_KEYS), flag(NET_KEYS), json(), any::<bool>());
    super::run(
        "config",
        input,
        |(disk_flag, net_flag, mut file, with_kernel)| {
            if let Ok(d) = disk_flag.parse::<DiskConfig>() {
                let again: Result<DiskConfig, _> = render_disk(&d).parse();
                check(again.as_ref() == Ok(&d), || {
                    format!("{d:?} came back as {again:?}")
                })?;
            }
            if let Ok(n) = net_flag.parse::<NetConfig>() {
                let again: Result<NetConfig, _> = render_net(&n).parse();
                check(again.as_ref() == Ok(&n), || {
                    format!("{n:?} came back as {again:?}")
                })?;
            }
            substitute(&mut file, &kernel, &disk);
            if let (true, Value::Object(o)) = (with_kernel, &mut file) {
                o.insert("kernel".into(), Value::from(kernel.clone()));
            }
            let Ok(parsed) = ConfigFile::from_json(&file.to_string()) else {
                return Ok(());
            };
            let text = serde_json::to_string(&parsed).unwrap();
            let again = ConfigFile::from_json(&text);
            check(again.as_ref().ok() == Some(&parsed), || {
                format!("{parsed:?} came back as {again:?}")
            })?;
            // Flags overlay the file as the binary does.
            let flags = ConfigFile {
                disks: disk_flag.parse::<DiskConfig>().ok().map(|d| vec![d]),
                nets: net_flag.parse::<NetConfig>().ok().map(|n| vec![n]),
                ..ConfigFile::default()
            };
            match VmConfig::validate(parsed.overlay(flags), 4096) {
                Ok(c) => validated(&c),
                Err(ConfigError::Invalid { field, .. }) => check(FIELDS.contains(&field), || {
                    format!("unknown field {field:?}")
                }),
                Err(e) => Err(TestCaseError::fail(format!("validate: {e}"))),
            }
        },
    );
}
