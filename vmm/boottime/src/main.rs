//! `virga-boottime`: did my kernel, initramfs or command line get slower?
//!
//! ```text
//! virga-boottime record  --kernel K --initramfs I --marker M --runs 20 --out base.json
//! virga-boottime compare --kernel K2 --initramfs I --marker M --baseline base.json
//! virga-boottime compare --kernel K2 --baseline-kernel K ...      # both booted, interleaved
//! virga-boottime compare --kernel K --vmm new/vmm --baseline-vmm old/vmm ...  # two Virga builds
//! virga-boottime compare --baseline base.json --candidate new.json  # two files, no boots
//! ```
//! Exit status: 0 no regression, 1 a regression (significant and above the
//! threshold), 2 anything else that went wrong (bad arguments, a boot that
//! failed, a phase that could not be tested).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use virga_boottime::boot::Launcher;
use virga_boottime::report::Report;
use virga_boottime::samples::{Phase, SampleFile, Source, Variant, VariantInfo};
use virga_boottime::stats::{self, Rule, Verdict};

#[derive(Parser)]
#[command(
    name = "virga-boottime",
    version,
    about = "Boot-time regression checks: boot a kernel and initramfs N times under Virga's VMM, split each boot into phases, and compare with a baseline."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Boot a variant N times and keep the boots in a file (a baseline).
    Record {
        #[command(flatten)]
        variant: VariantArgs,
        #[command(flatten)]
        run: RunArgs,
        /// Where the boots go.
        #[arg(long)]
        out: PathBuf,
        /// Add to the boots already in `--out` (the same variant only).
        #[arg(long)]
        append: bool,
    },
    /// Boot a candidate and compare it with a baseline: a file, or a second
    /// variant booted interleaved with it.
    Compare {
        #[command(flatten)]
        variant: VariantArgs,
        #[command(flatten)]
        run: RunArgs,
        /// The baseline's boots, from `record`.
        #[arg(long, conflicts_with_all = ["baseline_kernel", "baseline_image", "baseline_initramfs", "baseline_cmdline", "baseline_vmm"])]
        baseline: Option<PathBuf>,
        /// Boot this kernel as the baseline (the candidate's other inputs unless given).
        #[arg(long)]
        baseline_kernel: Option<PathBuf>,
        /// Boot this disk image as the baseline.
        #[arg(long, conflicts_with = "baseline_kernel")]
        baseline_image: Option<PathBuf>,
        #[arg(long)]
        baseline_initramfs: Option<PathBuf>,
        #[arg(long)]
        baseline_cmdline: Option<String>,
        /// Boot the baseline with this VMM binary (the candidate with
        /// `--vmm`'s): did a new build of Virga make these boots slower?
        #[arg(long)]
        baseline_vmm: Option<PathBuf>,
        /// The candidate's boots from a file instead of booting it.
        #[arg(long)]
        candidate: Option<PathBuf>,
        /// The smallest slowdown that fails the check, in percent.
        #[arg(long, default_value = "3", value_parser = parse_percent)]
        threshold: f64,
        /// Significance level of the one-sided rank test.
        #[arg(long, default_value_t = 0.01)]
        alpha: f64,
        /// Confidence of the reported interval.
        #[arg(long, default_value_t = 0.95)]
        confidence: f64,
        /// The phase whose change decides: vmm_setup, kernel, userspace, guest or total.
        #[arg(long, default_value = "total", value_parser = parse_phase)]
        phase: Phase,
        /// Write the whole comparison (both runs' boots too) as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write JUnit XML for a CI system.
        #[arg(long)]
        junit: Option<PathBuf>,
        /// Keep the candidate's boots (a baseline for next time).
        #[arg(long)]
        save: Option<PathBuf>,
    },
}

/// The command line a kernel boots with unless `--cmdline` says otherwise.
const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";

#[derive(Args, Clone)]
struct VariantArgs {
    /// Kernel: an ELF vmlinux or a bzImage.
    #[arg(long, conflicts_with = "image")]
    kernel: Option<PathBuf>,
    #[arg(long, conflicts_with = "image")]
    initramfs: Option<PathBuf>,
    /// A raw disk image (a cloud image) instead: its kernel, initramfs and
    /// command line come from its own /boot, and each boot gets a fresh
    /// copy-on-write root disk over it.
    #[arg(long)]
    image: Option<PathBuf>,
    /// The kernel command line [default: console=ttyS0 reboot=k panic=-1;
    /// for an image, its boot entry's with Virga's console].
    #[arg(long)]
    cmdline: Option<String>,
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    #[arg(long, default_value_t = 256)]
    memory_mib: u32,
    /// The console line (a substring) that ends a boot.
    #[arg(long)]
    marker: Option<String>,
    /// A further VMM flag, e.g. `--vmm-arg=--disk --vmm-arg=path=root.img` (repeat).
    #[arg(long = "vmm-arg", allow_hyphen_values = true)]
    vmm_args: Vec<String>,
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Boots per variant.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Boots per variant first made and thrown away (cold caches).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// The VMM binary (default: `vmm` beside this program, else on PATH).
    #[arg(long)]
    vmm: Option<PathBuf>,
    /// The boot picker, for `--image` (default: `virga-bootpick` beside
    /// this program, else on PATH).
    #[arg(long)]
    bootpick: Option<PathBuf>,
    /// How long one boot may take to reach its marker.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{s:?}: a percentage such as 3 or 2.5%"))?;
    if !(0.0..1000.0).contains(&v) {
        return Err(format!("{s}: between 0 and 1000 percent"));
    }
    Ok(v / 100.0)
}

fn parse_phase(s: &str) -> Result<Phase, String> {
    Phase::parse(s).ok_or_else(|| {
        let names: Vec<_> = Phase::ALL.iter().map(|p| p.name()).collect();
        format!("{s:?}: one of {}", names.join(", "))
    })
}

impl VariantArgs {
    fn variant(&self) -> Result<Variant> {
        let (source, cmdline) = match (&self.kernel, &self.image) {
            (Some(kernel), None) => (
                Source::Kernel {
                    kernel: kernel.clone(),
                    initramfs: self.initramfs.clone(),
                },
                Some(
                    self.cmdline
                        .clone()
                        .unwrap_or_else(|| DEFAULT_CMDLINE.to_owned()),
                ),
            ),
            (None, Some(image)) => (Source::Image(image.clone()), self.cmdline.clone()),
            _ => bail!("--kernel (with --initramfs) or --image is needed to boot"),
        };
        let marker = self
            .marker
            .clone()
            .filter(|m| !m.is_empty())
            .context("--marker is needed to boot: the console line that ends a boot")?;
        if self.vcpus == 0 || self.memory_mib < 16 {
            bail!("--vcpus at least 1 and --memory-mib at least 16");
        }
        Ok(Variant {
            source,
            cmdline,
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            marker,
            vmm_args: self.vmm_args.clone(),
            vmm: None,
        })
    }
}

/// A program beside this one, else by name on PATH.
fn beside_me(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|me| me.parent().map(|d| d.join(name)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Boots the variants in turn (the order alternating round by round, so a
/// drifting host weighs on each alike) and returns each one's boots.
async fn boot_runs(variants: &[&Variant], run: &RunArgs) -> Result<Vec<SampleFile>> {
    if run.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let dir = tempfile::tempdir().context("creating a directory for the API sockets")?;
    let launcher = Launcher {
        vmm: run.vmm.clone().unwrap_or_else(|| beside_me("vmm")),
        bootpick: run
            .bootpick
            .clone()
            .unwrap_or_else(|| beside_me("virga-bootpick")),
        dir: dir.path().to_owned(),
        timeout: Duration::from_secs(run.timeout_secs.max(1)),
    };
    let mut ready = Vec::new();
    for (k, v) in variants.iter().enumerate() {
        ready.push(launcher.prepare(v, k).await?);
    }
    let mut files = ready
        .iter()
        .map(|r| {
            VariantInfo::of(r)
                .map(SampleFile::new)
                .with_context(|| format!("reading {}", r.kernel.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let names = ["baseline", "candidate"];
    let mut n = 0;
    for round in 0..(run.warmup + run.runs) {
        let mut order: Vec<usize> = (0..variants.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            n += 1;
            let boot = launcher
                .boot(&ready[i], n)
                .await
                .with_context(|| format!("boot {n} ({})", files[i].variant.label()))?;
            let total = boot.phase(Phase::Total).unwrap_or(f64::NAN);
            let who = if variants.len() == 2 {
                names[i]
            } else {
                "boot"
            };
            if round < run.warmup {
                eprintln!("warm-up {who}: {total:.1} ms (not counted)");
            } else {
                eprintln!(
                    "{who} {}/{}: {total:.1} ms",
                    round - run.warmup + 1,
                    run.runs
                );
                files[i].boots.push(boot);
            }
        }
    }
    Ok(files)
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn record(variant: &VariantArgs, run: &RunArgs, out: &Path, append: bool) -> Result<ExitCode> {
    let v = variant.variant()?;
    let rt = runtime()?;
    let mut files = rt.block_on(boot_runs(&[&v], run))?;
    let mut file = files.remove(0);
    if append && out.exists() {
        let mut old = SampleFile::load(out)?;
        old.append(file, out)?;
        file = old;
    }
    for p in Phase::ALL {
        let v = file.values(p);
        if !v.is_empty() {
            println!(
                "{:<10} median {:>9.1} ms  (IQR {:.1}-{:.1}, {} boots)",
                p.name(),
                stats::median(&v),
                stats::quantile(&v, 0.25),
                stats::quantile(&v, 0.75),
                v.len()
            );
        }
    }
    println!(
        "median_total_ms={:.1}",
        stats::median(&file.values(Phase::Total))
    );
    file.save(out)?;
    println!("{} boots in {}", file.boots.len(), out.display());
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::too_many_arguments)]
fn compare(
    variant: &VariantArgs,
    run: &RunArgs,
    baseline: Option<&Path>,
    baseline_variant: Option<Variant>,
    candidate: Option<&Path>,
    rule: Rule,
    phase: Phase,
    outputs: (Option<&Path>, Option<&Path>, Option<&Path>),
) -> Result<ExitCode> {
    let (json, junit, save) = outputs;
    if !(0.0..0.5).contains(&rule.alpha) || rule.alpha == 0.0 {
        bail!("--alpha between 0 and 0.5");
    }
    if !(0.5..1.0).contains(&rule.confidence) {
        bail!("--confidence between 0.5 and 1");
    }
    let fewest = stats::fewest_runs(rule.alpha);
    if candidate.is_none() && run.runs < fewest {
        bail!(
            "with --runs {} the rank test can never reach p < {}: use --runs {fewest} or more \
             (20, the default, also finds small slowdowns)",
            run.runs,
            rule.alpha
        );
    }
    let rt = runtime()?;
    let (base, cand, interleaved) = match (baseline, baseline_variant, candidate) {
        (Some(b), None, Some(c)) => (SampleFile::load(b)?, SampleFile::load(c)?, false),
        (Some(b), None, None) => {
            let base = SampleFile::load(b)?;
            let v = variant.variant()?;
            let mut files = rt.block_on(boot_runs(&[&v], run))?;
            (base, files.remove(0), false)
        }
        (None, Some(bv), None) => {
            let v = variant.variant()?;
            let mut files = rt.block_on(boot_runs(&[&bv, &v], run))?;
            let cand = files.remove(1);
            (files.remove(0), cand, true)
        }
        (None, Some(_), Some(_)) => {
            bail!("--candidate (a file) and --baseline-kernel (a boot) do not mix")
        }
        (None, None, _) => {
            bail!("a baseline is needed: --baseline FILE, or --baseline-kernel|image|vmm")
        }
        (Some(_), Some(_), _) => {
            bail!("--baseline (a file) and --baseline-kernel|image (a boot) do not mix")
        }
    };
    if !interleaved && base.variant.marker != cand.variant.marker {
        eprintln!(
            "note: the baseline ended its boots at {:?}, the candidate at {:?}",
            base.variant.marker, cand.variant.marker
        );
    }
    let report = Report::new(base, cand, rule, phase, interleaved);
    print!("{}", report.table());
    if let Some(p) = json {
        write(p, &serde_json::to_string_pretty(&report)?)?;
    }
    if let Some(p) = junit {
        write(p, &report.junit())?;
    }
    if let Some(p) = save {
        report.candidate.save(p)?;
    }
    Ok(match (report.decided(), report.verdict) {
        (false, _) => ExitCode::from(2),
        (true, Verdict::Regression) => ExitCode::from(1),
        (true, _) => ExitCode::SUCCESS,
    })
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Record {
            variant,
            run,
            out,
            append,
        } => record(variant, run, out, *append),
        Command::Compare {
            variant,
            run,
            baseline,
            baseline_kernel,
            baseline_image,
            baseline_initramfs,
            baseline_cmdline,
            baseline_vmm,
            candidate,
            threshold,
            alpha,
            confidence,
            phase,
            json,
            junit,
            save,
        } => {
            let baseline_variant = if baseline_kernel.is_some()
                || baseline_image.is_some()
                || baseline_initramfs.is_some()
                || baseline_cmdline.is_some()
                || baseline_vmm.is_some()
            {
                let mut b = variant.clone();
                if let Some(k) = baseline_kernel {
                    b.kernel = Some(k.clone());
                    b.image = None;
                }
                if let Some(i) = baseline_image {
                    b.image = Some(i.clone());
                    b.kernel = None;
                    b.initramfs = None;
                }
                if let Some(i) = baseline_initramfs {
                    b.initramfs = Some(i.clone());
                }
                if let Some(c) = baseline_cmdline {
                    b.cmdline = Some(c.clone());
                }
                b.variant().map(|mut v| {
                    v.vmm = baseline_vmm.clone();
                    Some(v)
                })
            } else {
                Ok(None)
            };
            baseline_variant.and_then(|bv| {
                compare(
                    variant,
                    run,
                    baseline.as_deref(),
                    bv,
                    candidate.as_deref(),
                    Rule {
                        alpha: *alpha,
                        threshold: *threshold,
                        confidence: *confidence,
                    },
                    *phase,
                    (json.as_deref(), junit.as_deref(), save.as_deref()),
                )
            })
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("virga-boottime: {e:#}");
            ExitCode::from(2)
        }
    }
}
