//! Invalid configurations fail before any VM exists: exit status 2 and one line
//! naming the field. These run on the host; no KVM is touched.

use std::process::Command;

use virga_e2e::{images_dir, vmm_bin};

fn vmm(args: &[&str]) -> (i32, String) {
    let out = Command::new(vmm_bin())
        .args(args)
        .output()
        .expect("running vmm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn invalid_configs_exit_2_naming_the_field() {
    let kernel = images_dir().join("vmlinux");
    let kernel = kernel.to_str().expect("utf-8 path");
    let dir = std::env::temp_dir().join(format!("virga-e2e-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unknown = dir.join("unknown.json");
    std::fs::write(&unknown, format!(r#"{{"kernel": "{kernel}", "cpus": 2}}"#)).unwrap();
    let unknown = unknown.to_str().unwrap().to_owned();

    let cases: &[(&[&str], &str)] = &[
        (&[], "kernel"),
        (&["--kernel", "/nonexistent/vmlinux"], "kernel"),
        (&["--kernel", kernel, "--vcpus", "0"], "vcpus"),
        (&["--kernel", kernel, "--vcpus", "33"], "vcpus"),
        (&["--kernel", kernel, "--memory-mib", "32"], "memory_mib"),
        (
            &["--kernel", kernel, "--memory-mib", "100000000"],
            "memory_mib",
        ),
        (
            &["--kernel", kernel, "--initramfs", "/nonexistent"],
            "initramfs",
        ),
        (&["--config", &unknown], "unknown field `cpus`"),
        (
            &["--kernel", kernel, "--serial", "file:/nonexistent/dir/log"],
            "serial.path",
        ),
        (&["--kernel", kernel, "--vcpus", "banana"], "--vcpus"),
    ];
    for (args, field) in cases {
        let (code, stderr) = vmm(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(
            stderr.contains(field),
            "{args:?}: {stderr:?} does not name {field}"
        );
        if !args.contains(&"banana") {
            assert_eq!(
                stderr.trim().lines().count(),
                1,
                "{args:?}: one line: {stderr:?}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}
