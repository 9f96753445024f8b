//! Running a scenario directly on the host.

use std::process::Command;
use std::time::Instant;

use virga_guest_images::ImageSet;

use crate::{io_error, Mode, Outcome, Scenario, TestbedError};

pub fn run(images: &ImageSet, scenario: &Scenario) -> Result<Outcome, TestbedError> {
    let temp = tempfile::tempdir().map_err(io_error(scenario, "creating a work directory"))?;
    let bin = temp.path().join("bin");
    let work = temp.path().join("work");
    for dir in [&bin, &work] {
        std::fs::create_dir_all(dir).map_err(io_error(scenario, "creating a work directory"))?;
    }
    for b in &scenario.binaries {
        let name = b.file_name().unwrap_or_default();
        std::os::unix::fs::symlink(b, bin.join(name))
            .map_err(io_error(scenario, format!("linking {}", b.display())))?;
    }
    let mut command = Command::new("timeout");
    if scenario.rootfs {
        let copy = temp.path().join("rootfs.ext4");
        std::fs::copy(images.rootfs(), &copy)
            .map_err(io_error(scenario, "copying the guest rootfs"))?;
        command.env("ROOTFS", copy);
    }
    if scenario.scratch_mib.is_some() {
        let scratch = scenario.scratch_path(temp.path());
        scenario.make_scratch(&scratch)?;
        command.env("SCRATCH", scratch);
    }
    let started = Instant::now();
    let output = command
        .arg("--kill-after=5")
        .arg(scenario.timeout.as_secs().to_string())
        .args(["sh", "-c", &format!("exec 2>&1\n{}", scenario.script)])
        .env("BIN", &bin)
        .env("GUEST", &images.dir)
        .env("WORK", &work)
        .env("HOST_ADDR", "127.0.0.1")
        .output()
        .map_err(io_error(scenario, "running the scenario"))?;
    let text = crate::plain_line_ends(&String::from_utf8_lossy(&output.stdout));
    let status = output.status.code().unwrap_or(-1);
    if status == 124 || status == 137 {
        return Err(TestbedError::Timeout {
            scenario: scenario.name.clone(),
            timeout: scenario.timeout,
            report: crate::failure_report(&[("scenario output", &text)]),
        });
    }
    Ok(Outcome {
        status,
        output: text,
        mode: Mode::Native,
        attempts: 1,
        duration: started.elapsed(),
        power_cut: false,
    })
}
