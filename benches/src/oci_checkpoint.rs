//! The `oci` benchmark's checkpoint section: a long-running container (`sh -c 'while true;
//! do sleep 1; done'`, the default VM of 1 vCPU and 256 MiB) started under zvm-runc from
//! the template, `checkpoint --image-path DIR ID` (which stops and deletes it, as runc's
//! does), `restore --image-path DIR --bundle B -d ID`, and `exec ID true` repeated until it
//! succeeds: the restored container answers. The peer, in the same run: the same
//! container's create + start from the template, to its first answer to `exec ID true`.

use crate::measure::{fmt_opt, median, ms, ratio};
use crate::oci_cmd::RuntimeCli;
use crate::templates::{vm_start, VmStart};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// The goal for checkpoint + restore, ms (below).
pub const GOAL_CHECKPOINT_RESTORE_MS: f64 = 1000.0;
/// What the container runs.
pub const LOOP_SCRIPT: &str = "while true; do sleep 1; done";
/// The container VM's memory (zvm-runc's default; the bundle sets no limit).
pub const MEMORY_MIB: u64 = 256;

/// A checkpoint's size on disk, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSize {
    /// Sum of the files' lengths.
    pub apparent: u64,
    /// Sum of their allocated blocks (the files are sparse).
    pub allocated: u64,
}

/// The size of the files under `dir`.
pub fn image_size(dir: &Path) -> Option<ImageSize> {
    let mut size = ImageSize {
        apparent: 0,
        allocated: 0,
    };
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).ok()?.flatten() {
            let meta = entry.metadata().ok()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                size.apparent += meta.len();
                size.allocated += meta.blocks() * 512;
            }
        }
    }
    Some(size)
}

/// One checkpoint run (`None` for the steps it did not reach).
#[derive(Debug, Clone, Default)]
pub struct CheckpointRun {
    /// 1-based run number.
    pub run: usize,
    /// `create` of the container.
    pub create: Option<Duration>,
    /// `start`.
    pub start: Option<Duration>,
    /// From `start` returning to the first successful `exec ID true`.
    pub first_answer: Option<Duration>,
    /// `checkpoint --image-path DIR ID`.
    pub checkpoint: Option<Duration>,
    /// `restore --image-path DIR --bundle B -d ID`.
    pub restore: Option<Duration>,
    /// From `restore` returning to the first successful `exec ID true`.
    pub answer: Option<Duration>,
    /// The checkpoint's size.
    pub image: Option<ImageSize>,
    /// How the container's first VM started (its sandbox.log).
    pub vm_start: Option<VmStart>,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

type Pick = fn(&CheckpointRun) -> Option<Duration>;
/// The figures reported: (title, JSON key, pick).
pub const FIGURES: [(&str, &str, Pick); 10] = [
    ("create (from the template)", "create", |r| r.create),
    ("start", "start", |r| r.start),
    ("start -> exec true answers", "first_answer", |r| {
        r.first_answer
    }),
    ("create + start + answer (peer)", "fresh_to_answer", |r| {
        Some(r.create? + r.start? + r.first_answer?)
    }),
    ("checkpoint", "checkpoint", |r| r.checkpoint),
    ("restore", "restore", |r| r.restore),
    ("restore -> exec true answers", "answer", |r| r.answer),
    ("checkpoint + restore", "checkpoint_restore", |r| {
        Some(r.checkpoint? + r.restore?)
    }),
    ("restore + answer", "restore_to_answer", |r| {
        Some(r.restore? + r.answer?)
    }),
    (
        "checkpoint + restore + answer",
        "checkpoint_to_answer",
        |r| Some(r.checkpoint? + r.restore? + r.answer?),
    ),
];

/// All checkpoint runs.
#[derive(Debug, Clone, Default)]
pub struct CheckpointReport {
    /// Every run.
    pub runs: Vec<CheckpointRun>,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

impl CheckpointReport {
    /// Median of a figure over the runs that have it, ms.
    pub fn median(&self, pick: Pick) -> Option<f64> {
        median(
            &self
                .runs
                .iter()
                .filter_map(pick)
                .map(ms)
                .collect::<Vec<_>>(),
        )
    }

    /// Median checkpoint size (apparent, allocated), MiB.
    pub fn image_mib(&self) -> (Option<f64>, Option<f64>) {
        let of = |f: fn(&ImageSize) -> u64| {
            median(
                &self
                    .runs
                    .iter()
                    .filter_map(|r| r.image.as_ref().map(|i| mib(f(i))))
                    .collect::<Vec<_>>(),
            )
        };
        (of(|i| i.apparent), of(|i| i.allocated))
    }

    /// Median checkpoint + restore, ms.
    pub fn checkpoint_restore(&self) -> Option<f64> {
        self.median(|r| Some(r.checkpoint? + r.restore?))
    }

    /// Restore + answer over create + start + answer (the peer).
    pub fn ratio_to_fresh(&self) -> Option<f64> {
        ratio(
            self.median(|r| Some(r.restore? + r.answer?)),
            self.median(|r| Some(r.create? + r.start? + r.first_answer?)),
        )
    }

    /// Runs that failed.
    pub fn failures(&self) -> usize {
        self.runs.iter().filter(|r| r.error.is_some()).count()
    }

    /// As JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let medians: serde_json::Map<String, serde_json::Value> = FIGURES
            .iter()
            .map(|(_, key, pick)| (key.to_string(), serde_json::json!(self.median(*pick))))
            .collect();
        let (apparent, allocated) = self.image_mib();
        let cr = self.checkpoint_restore();
        serde_json::json!({
            "memory_mib": MEMORY_MIB,
            "median_ms": medians,
            "image_mib": {"apparent": apparent, "allocated": allocated},
            "ratio_restore_to_fresh_start": self.ratio_to_fresh(),
            "goal_checkpoint_restore_ms": GOAL_CHECKPOINT_RESTORE_MS,
            "goal_met": cr.map(|v| v < GOAL_CHECKPOINT_RESTORE_MS),
            "failures": self.failures(),
            "runs": self.runs.iter().map(|r| {
                let mut o: serde_json::Map<String, serde_json::Value> = FIGURES
                    .iter()
                    .map(|(_, key, pick)| (format!("{key}_ms"), serde_json::json!(pick(r).map(ms))))
                    .collect();
                o.insert("run".into(), r.run.into());
                o.insert("image_bytes".into(), serde_json::json!(r.image.map(|i| [i.apparent, i.allocated])));
                o.insert("vm_start".into(), serde_json::json!(r.vm_start.as_ref().map(VmStart::describe)));
                o.insert("error".into(), serde_json::json!(r.error));
                serde_json::Value::Object(o)
            }).collect::<Vec<_>>(),
        })
    }
}

/// One run: container `id` from `bundle`, its checkpoint in `image`; the container is
/// removed (and the checkpoint) whatever happens.
fn one_run(zvm: &RuntimeCli, bundle: &Path, dir: &Path, run: usize) -> CheckpointRun {
    let id = format!("bench-{}-ckpt-{run}", std::process::id());
    let log = dir.join(format!("{id}.log"));
    let image = dir.join(format!("ckpt-{run}"));
    let (b, img) = (
        bundle.to_string_lossy().into_owned(),
        image.to_string_lossy().into_owned(),
    );
    let mut r = CheckpointRun {
        run,
        ..CheckpointRun::default()
    };
    let timed = |args: &[&str]| -> Result<Duration, String> {
        let t = Instant::now();
        zvm.run(args, &log)?;
        Ok(t.elapsed())
    };
    let result = (|| {
        r.create = Some(timed(&["create", "--bundle", &b, &id])?);
        r.start = Some(timed(&["start", &id])?);
        let sandbox = std::fs::read_to_string(zvm.container_dir(&id).join("sandbox.log"));
        r.vm_start = Some(vm_start(&sandbox.unwrap_or_default()));
        r.first_answer = Some(zvm.retry_until_ok(&["exec", &id, "true"], &log)?);
        r.checkpoint = Some(timed(&["checkpoint", "--image-path", &img, &id])?);
        r.image = image_size(&image);
        r.restore = Some(timed(&[
            "restore",
            "--image-path",
            &img,
            "--bundle",
            &b,
            "-d",
            &id,
        ])?);
        r.answer = Some(zvm.retry_until_ok(&["exec", &id, "true"], &log)?);
        Ok::<(), String>(())
    })();
    r.error = result.err();
    if let Err(e) = zvm.run(&["delete", "--force", &id], &log) {
        eprintln!("warning: delete --force {id}: {e}");
    }
    let _ = std::fs::remove_dir_all(&image);
    r
}

fn print_run(r: &CheckpointRun) {
    let f = |d: Option<Duration>| fmt_opt(d.map(ms), 1);
    println!(
        "ckpt {:>2}  create {:>9} ms  start {:>8} ms  answer {:>8} ms  checkpoint {:>8} ms  restore {:>8} ms  answer {:>8} ms{}{}",
        r.run,
        f(r.create),
        f(r.start),
        f(r.first_answer),
        f(r.checkpoint),
        f(r.restore),
        f(r.answer),
        match &r.vm_start {
            Some(VmStart::Booted(_)) => "  (its first VM booted a kernel)",
            _ => "",
        },
        r.error.as_ref().map(|e| format!("  FAILED: {e}")).unwrap_or_default()
    );
}

/// Runs `runs` checkpoint runs with `zvm` (zvm-runc with templates) on `bundle`.
pub fn run(zvm: &RuntimeCli, bundle: &Path, dir: &Path, runs: usize) -> CheckpointReport {
    println!();
    println!("== Checkpoint + restore of a running container (`sh -c '{LOOP_SCRIPT}'`, {MEMORY_MIB} MiB VM) under zvm-runc with templates, {runs} run(s)");
    let mut report = CheckpointReport::default();
    for i in 1..=runs {
        let r = one_run(zvm, bundle, dir, i);
        print_run(&r);
        report.runs.push(r);
    }
    print_summary(&report);
    report
}

/// Prints the medians, the ratio to the peer and the goal.
pub fn print_summary(report: &CheckpointReport) {
    println!();
    println!("| median | ms |");
    println!("|---|---|");
    for (title, _, pick) in FIGURES {
        println!("| {title} | {} |", fmt_opt(report.median(pick), 1));
    }
    let (apparent, allocated) = report.image_mib();
    println!(
        "checkpoint size: {} MiB apparent, {} MiB allocated",
        fmt_opt(apparent, 1),
        fmt_opt(allocated, 1)
    );
    println!(
        "restore + answer / create + start + answer (from the template): {}",
        fmt_opt(report.ratio_to_fresh(), 3)
    );
    let cr = report.checkpoint_restore();
    let verdict = match cr.map(|v| v < GOAL_CHECKPOINT_RESTORE_MS) {
        Some(true) => "met",
        Some(false) => "not met",
        None => "no data",
    };
    println!(
        "goal checkpoint + restore < {GOAL_CHECKPOINT_RESTORE_MS} ms: {verdict} ({} ms)",
        fmt_opt(cr, 1)
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn d(v: u64) -> Option<Duration> {
        Some(Duration::from_millis(v))
    }

    #[test]
    fn medians_ratio_goal_and_json() {
        let run = |n, ckpt, restore| CheckpointRun {
            run: n,
            create: d(10_000),
            start: d(500),
            first_answer: d(1_500),
            checkpoint: d(ckpt),
            restore: d(restore),
            answer: d(600),
            image: Some(ImageSize {
                apparent: 300 << 20,
                allocated: 40 << 20,
            }),
            vm_start: Some(VmStart::Restored("t".into())),
            error: None,
        };
        let mut failed = CheckpointRun {
            run: 3,
            create: d(9_000),
            error: Some("boom".into()),
            ..CheckpointRun::default()
        };
        failed.vm_start = None;
        let report = CheckpointReport {
            runs: vec![run(1, 300, 400), run(2, 500, 600), failed],
        };
        assert_eq!(report.checkpoint_restore(), Some(900.0));
        assert_eq!(report.median(|r| r.create), Some(10_000.0));
        assert_eq!(report.ratio_to_fresh(), Some(1100.0 / 12_000.0));
        assert_eq!(report.image_mib(), (Some(300.0), Some(40.0)));
        assert_eq!(report.failures(), 1);
        let j = report.to_json();
        assert_eq!(j["median_ms"]["checkpoint_restore"], 900.0);
        assert_eq!(j["median_ms"]["checkpoint_to_answer"], 1500.0);
        assert_eq!(j["goal_met"], true);
        assert_eq!(j["memory_mib"], 256);
        assert_eq!(j["runs"][0]["checkpoint_ms"], 300.0);
        assert_eq!(j["runs"][2]["error"], "boom");
        assert!(j["runs"][2]["restore_ms"].is_null());
        assert!(CheckpointReport::default().to_json()["goal_met"].is_null());
    }

    #[test]
    fn image_sizes_add_up_over_subdirectories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 4096]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let sparse = std::fs::File::create(dir.path().join("sub/b")).unwrap();
        sparse.set_len(1 << 20).unwrap();
        let size = image_size(dir.path()).unwrap();
        assert_eq!(size.apparent, 4096 + (1 << 20));
        assert!(size.allocated < 1 << 20, "{size:?}");
        assert_eq!(image_size(&dir.path().join("missing")), None);
    }
}
