//! `zvm template ...`: the VM templates container VMs start from (see
//! `oci_runtime::sandbox::template`): make one ahead of the first container, list them,
//! remove them.

use clap::Subcommand;
use oci_runtime::sandbox::template::{prepare_template_shape, TemplateSettings, TemplateShape};
use oci_runtime::sandbox::{GuestArtifacts, VmSize};
use std::process::ExitCode;

/// What `zvm template` does.
#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Make the template for container VMs of this size and shape now (booting the guest
    /// kernel once), unless it exists; prints its id.
    Prepare(PrepareArgs),
    /// List the templates: id, vCPUs, memory, disk use, when made and how long it took.
    List,
    /// Remove templates (all of them with --all); they are made again when needed.
    Rm {
        /// Remove every template.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// Template ids (as `list` prints them).
        ids: Vec<String>,
    },
}

/// What `zvm template prepare` makes: the template a container VM of this size and
/// shape restores from.
#[derive(Debug, Clone, clap::Args)]
pub struct PrepareArgs {
    /// vCPUs of the VMs it is for.
    #[arg(long, default_value_t = oci_runtime::sandbox::DEFAULT_VCPUS)]
    pub vcpus: u8,
    /// Memory (MiB) of the VMs it is for.
    #[arg(long, default_value_t = oci_runtime::sandbox::DEFAULT_MEMORY_MIB)]
    pub memory_mib: u64,
    /// The flavour with the container's virtio-fs share: for containers with host bind
    /// mounts or volumes, or their root over virtio-fs (zvm-runc's `zvm.rootfs=virtiofs`,
    /// node deployments' default root).
    #[arg(long)]
    pub share: bool,
    /// Network interfaces of the VMs it is for (each clone gets its own taps).
    #[arg(long, default_value_t = 0,
          value_parser = clap::value_parser!(u8).range(0..=TemplateShape::NICS_MAX as i64))]
    pub nics: u8,
    /// Data disks of the VMs it is for, after the agent's and the container's (each clone
    /// gets its own files).
    #[arg(long, default_value_t = 0,
          value_parser = clap::value_parser!(u8).range(0..=TemplateShape::DATA_DISKS_MAX as i64))]
    pub disks: u8,
}

impl PrepareArgs {
    /// The template shape these arguments ask for.
    pub fn shape(&self) -> TemplateShape {
        TemplateShape {
            size: VmSize {
                vcpus: self.vcpus,
                memory_mib: self.memory_mib,
            },
            share: self.share,
            nics: usize::from(self.nics),
            data_disks: usize::from(self.disks),
        }
    }
}

/// Runs `command`.
pub fn run(command: TemplateCommand) -> ExitCode {
    match run_inner(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zvm template: {e}");
            ExitCode::from(1)
        }
    }
}

fn run_inner(command: TemplateCommand) -> Result<(), String> {
    let settings = TemplateSettings::from_env();
    if settings.dir.as_os_str().is_empty() {
        return Err("no template directory: set ZVM_TEMPLATE_DIR or HOME".into());
    }
    let cache = settings.cache();
    match command {
        TemplateCommand::Prepare(args) => {
            let artifacts = GuestArtifacts::locate().map_err(|e| e.to_string())?;
            let (id, built) = prepare_template_shape(&cache, &artifacts, &args.shape())
                .map_err(|e| e.to_string())?;
            match built {
                Some(took) => println!("{id} (made in {:.1} s)", took.as_secs_f64()),
                None => println!("{id} (already there)"),
            }
        }
        TemplateCommand::List => {
            println!(
                "{:<36} {:>5} {:>8} {:>9} {:>8}",
                "ID", "VCPUS", "MEM_MIB", "DISK_MIB", "BUILD_S"
            );
            for (id, manifest, bytes) in cache.list() {
                let (vcpus, mem, build) = manifest
                    .map(|m| {
                        (
                            m.key.vcpus.to_string(),
                            m.key.memory_mib.to_string(),
                            format!("{:.1}", m.build_ms as f64 / 1000.0),
                        )
                    })
                    .unwrap_or_else(|| ("?".into(), "?".into(), "?".into()));
                println!(
                    "{id:<36} {vcpus:>5} {mem:>8} {:>9.1} {build:>8}",
                    bytes as f64 / f64::from(1 << 20)
                );
            }
        }
        TemplateCommand::Rm { all, ids } => {
            let ids: Vec<String> = if all {
                cache.list().into_iter().map(|(id, _, _)| id).collect()
            } else {
                ids
            };
            for id in ids {
                if id.contains('/') || id.contains("..") || id.is_empty() {
                    return Err(format!("{id:?} is not a template id"));
                }
                let _lock = cache
                    .lock(&id, true, std::time::Duration::from_secs(10))
                    .map_err(|e| e.to_string())?;
                cache.remove(&id).map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;
    use oci_runtime::sandbox::template::{shape_key, ContainerVm, TemplateCache};

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: TemplateCommand,
    }

    fn prepare(args: &[&str]) -> Result<PrepareArgs, clap::Error> {
        let cli = Cli::try_parse_from(["zvm-template", "prepare"].iter().chain(args))?;
        match cli.command {
            TemplateCommand::Prepare(p) => Ok(p),
            other => panic!("not prepare: {other:?}"),
        }
    }

    #[test]
    fn prepare_asks_for_the_flavour_and_shape_given() {
        let plain = prepare(&[]).unwrap().shape();
        assert_eq!(
            plain,
            TemplateShape::plain(VmSize {
                vcpus: oci_runtime::sandbox::DEFAULT_VCPUS,
                memory_mib: oci_runtime::sandbox::DEFAULT_MEMORY_MIB,
            })
        );
        let s = prepare(&[
            "--share",
            "--nics",
            "2",
            "--disks",
            "1",
            "--memory-mib",
            "512",
        ])
        .unwrap()
        .shape();
        assert!(s.share);
        assert_eq!((s.nics, s.data_disks, s.size.memory_mib), (2, 1, 512));
        for bad in [
            &["--nics", "9"][..],
            &["--disks", "9"],
            &["--nics", "-1"],
            &["--disks", "x"],
            &["--share", "on"],
        ] {
            assert!(prepare(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prepare_makes_the_key_a_later_zvm_runc_create_looks_up() {
        let dir = tempfile::tempdir().unwrap();
        let (kernel, agent) = (dir.path().join("vmlinux"), dir.path().join("agent"));
        std::fs::write(&kernel, b"kernel").unwrap();
        std::fs::write(&agent, b"agent").unwrap();
        let artifacts = GuestArtifacts { kernel, agent };
        let cache = TemplateCache::new(dir.path().join("templates"), 4);
        let args = prepare(&["--share"]).unwrap();
        let prepared = shape_key(&cache, &artifacts, &args.shape()).unwrap();
        // zvm-runc's VM for a container whose root comes over virtio-fs.
        let files = oci_runtime::sandbox::VmFiles {
            kernel: &artifacts.kernel,
            agent_image: std::path::Path::new("/b/agent.ext4"),
            rootfs_image: std::path::Path::new("/b/rootfs.ext4"),
            console_log: std::path::Path::new("/b/console.log"),
            vsock: std::path::Path::new("/b/vsock.sock"),
        };
        let mut r = oci_runtime::sandbox::vm_resources(args.shape().size, files, false);
        r.fs.push(oci_runtime::sandbox::share::fs_device(
            std::path::Path::new("/b/fs.sock"),
        ));
        let later = ContainerVm::from_resources(&r, &artifacts)
            .unwrap()
            .key(&cache)
            .unwrap();
        assert_eq!(prepared, later);
        let plain = shape_key(&cache, &artifacts, &prepare(&[]).unwrap().shape()).unwrap();
        assert_ne!(plain.id(), later.id());
    }
}
