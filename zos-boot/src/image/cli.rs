//! The image-related `zvm node` subcommands: `image` (host side), and `prepare`,
//! `launch`, `report` (run by the node image's services inside the guest).

use super::boot::{self, API_SOCK, CACHE_DIR, MKFS, STATE_DIR};
use super::build::{self, ImageInputs, InitramfsPacking};
use super::settings::BootSettings;
use super::ImageError;
use clap::Args;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Flags of `zvm node image`.
#[derive(Debug, Args)]
pub struct ImageArgs {
    /// Output directory (gets vmlinux and initramfs.cpio.gz, or initramfs.cpio).
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,
    /// Guest kernel (default: $ZVM_KERNEL, else `zvm kernel path`, which builds it once).
    #[arg(long, env = "ZVM_KERNEL")]
    pub kernel: Option<PathBuf>,
    /// A statically linked zvm for the image (default: this zvm if it is static, else
    /// `zvm` beside it under x86_64-unknown-linux-gnu/release; `bash zos-boot/build.sh`
    /// builds one and prints its path).
    #[arg(long, value_name = "PATH")]
    pub zvm: Option<PathBuf>,
    /// The static service manager (default: zvm-init beside the static zvm).
    #[arg(long, value_name = "PATH")]
    pub init: Option<PathBuf>,
    /// mke2fs to copy into the image with its libraries (default: /sbin/mke2fs).
    #[arg(long, value_name = "PATH")]
    pub mkfs: Option<PathBuf>,
    /// gzip level of the initramfs: 1-9, or 0 for stored blocks (a larger file, less
    /// inflate work at boot).
    #[arg(long, default_value_t = build::DEFAULT_GZIP_LEVEL, value_parser = clap::value_parser!(u32).range(0..=9))]
    pub gzip_level: u32,
    /// Write the initramfs uncompressed, as DIR/initramfs.cpio: several times larger, but
    /// the kernel runs no inflate code at boot (the fastest boot where guest kernel code is
    /// emulated, as on KVM PVM hosts).
    #[arg(long, conflicts_with = "gzip_level")]
    pub uncompressed: bool,
}

/// Flags of `zvm node prepare`.
#[derive(Debug, Args)]
pub struct PrepareArgs {
    /// Where to mount the cache disk.
    #[arg(long, default_value = CACHE_DIR)]
    pub cache_dir: PathBuf,
    /// mkfs.ext4 to format a blank disk with.
    #[arg(long, default_value = MKFS)]
    pub mkfs: PathBuf,
}

/// Flags of `zvm node launch`.
#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// State directory of the daemon.
    #[arg(long, default_value = STATE_DIR)]
    pub state_dir: PathBuf,
    /// The daemon's API socket.
    #[arg(long, default_value = API_SOCK)]
    pub api_sock: PathBuf,
}

/// Flags of `zvm node report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The daemon's API socket.
    #[arg(long, default_value = API_SOCK)]
    pub api_sock: PathBuf,
    /// Only check `GET /health` (exit 0 when it answers 200), printing nothing.
    #[arg(long)]
    pub check: bool,
}

fn fail(code: u8, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("zvm: {e}");
    ExitCode::from(code)
}

/// `zvm node image`.
pub fn image(args: ImageArgs) -> ExitCode {
    match build_image(args) {
        Ok(out) => {
            let size = |p: &Path| std::fs::metadata(p).map(|m| m.len() >> 10).unwrap_or(0);
            println!("{} files: {}", out.files.len(), out.files.join(" "));
            println!(
                "boot it: zvm run --kernel {} --initrd {} --disk path=DISK.img --memory 512M",
                out.kernel.display(),
                out.initramfs.display()
            );
            println!("{} ({} KiB)", out.kernel.display(), size(&out.kernel));
            println!("{} ({} KiB)", out.initramfs.display(), size(&out.initramfs));
            ExitCode::SUCCESS
        }
        Err(e @ (ImageError::Input(_) | ImageError::NotFound { .. })) => fail(2, e),
        Err(e) => fail(1, e),
    }
}

fn build_image(args: ImageArgs) -> Result<build::ImageOutput, ImageError> {
    let me = std::env::current_exe().map_err(|source| ImageError::Io {
        what: "find my own executable".into(),
        source,
    })?;
    let zvm = match args.zvm {
        Some(p) => p,
        None => default_static_zvm(&me)?,
    };
    let init = match args.init {
        Some(p) => p,
        None => find(
            "the service manager zvm-init",
            &[sibling(&zvm, "zvm-init"), sibling(&me, "zvm-init")],
            "pass --init (guest/build.sh builds it)",
        )?,
    };
    let mkfs = match args.mkfs {
        Some(p) => p,
        None => find(
            "mke2fs",
            &[
                PathBuf::from("/sbin/mke2fs"),
                PathBuf::from("/usr/sbin/mke2fs"),
            ],
            "apt-get install e2fsprogs, or pass --mkfs",
        )?,
    };
    let kernel = match args.kernel {
        Some(p) => p,
        None => kernel_from_zvm(&me)?,
    };
    build::build(
        &ImageInputs {
            kernel,
            zvm,
            init,
            mkfs,
            packing: if args.uncompressed {
                InitramfsPacking::Uncompressed
            } else {
                InitramfsPacking::Gzip(args.gzip_level)
            },
        },
        &args.output,
    )
}

fn sibling(exe: &Path, name: &str) -> PathBuf {
    exe.with_file_name(name)
}

fn find(what: &str, candidates: &[PathBuf], hint: &str) -> Result<PathBuf, ImageError> {
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| ImageError::NotFound {
            what: what.into(),
            looked: candidates.to_vec(),
            hint: hint.into(),
        })
}

/// This zvm if it is static; else the static build beside it (target/<profile>/zvm ->
/// target/x86_64-unknown-linux-gnu/release/zvm).
fn default_static_zvm(me: &Path) -> Result<PathBuf, ImageError> {
    if std::fs::read(me)
        .ok()
        .is_some_and(|b| build::is_static_elf(&b) == Ok(true))
    {
        return Ok(me.to_path_buf());
    }
    let mut looked = vec![me.to_path_buf()];
    if let Some(target_dir) = me.parent().and_then(Path::parent) {
        looked.push(target_dir.join("x86_64-unknown-linux-gnu/release/zvm"));
    }
    let found = looked[1..]
        .iter()
        .find(|p| {
            std::fs::read(p)
                .ok()
                .is_some_and(|b| build::is_static_elf(&b) == Ok(true))
        })
        .cloned();
    found.ok_or(ImageError::NotFound {
        what: "a static zvm".into(),
        looked,
        hint: "pass --zvm (bash zos-boot/build.sh builds one and prints its path)".into(),
    })
}

/// Runs `zvm kernel path` (the project's kernel build, cached) and takes its last line.
fn kernel_from_zvm(me: &Path) -> Result<PathBuf, ImageError> {
    let out = std::process::Command::new(me)
        .args(["kernel", "path"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|source| ImageError::Io {
            what: "run zvm kernel path".into(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout.lines().last().map(|l| PathBuf::from(l.trim()));
    match path {
        Some(p) if out.status.success() && p.is_file() => Ok(p),
        _ => Err(ImageError::Kernel(format!(
            "`zvm kernel path` failed ({}); pass --kernel",
            out.status
        ))),
    }
}

fn settings() -> Result<BootSettings, ImageError> {
    BootSettings::from_proc()
}

/// `zvm node prepare`: the cache disk and the node identity.
pub fn prepare(args: PrepareArgs) -> ExitCode {
    match settings().and_then(|s| boot::prepare(&s, &args.mkfs, &args.cache_dir)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            println!("zos: storage FAILED: {e}");
            ExitCode::from(1)
        }
    }
}

/// `zvm node launch`: becomes `zvm node serve` with this boot's settings.
pub fn launch(args: LaunchArgs) -> ExitCode {
    let settings = match settings() {
        Ok(s) => s,
        Err(e) => return fail(2, e),
    };
    if let Some(dir) = args.api_sock.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let me = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return fail(1, format!("cannot find my own executable: {e}")),
    };
    let identity_dir = Path::new(boot::IDENTITY_DIR);
    let mut serve = std::process::Command::new(me);
    serve.args(boot::serve_args(
        &settings,
        &args.state_dir,
        &args.api_sock,
        identity_dir,
    ));
    if boot::needs_token(&settings) {
        // Through the environment, not argv: /proc/PID/cmdline is world-readable.
        match super::identity::api_token(identity_dir, super::identity::os_random) {
            Ok(token) => {
                println!(
                    "zos: the API on the network needs the bearer token in {}/api.token",
                    identity_dir.display()
                );
                serve.env("ZVM_NODE_TOKEN", token);
            }
            Err(e) => return fail(1, e),
        }
    }
    let err = serve.exec();
    fail(1, format!("cannot run zvm node serve: {err}"))
}

/// `zvm node report`: the boot report (or, with --check, a health check).
pub fn report(args: ReportArgs) -> ExitCode {
    if args.check {
        return if boot::check(&args.api_sock) {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    match settings().and_then(|s| boot::report(&s, &args.api_sock)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("zos: report FAILED: {e}");
            ExitCode::from(1)
        }
    }
}
