//! `zvm template ...`: the VM templates container VMs start from (see
//! `oci_runtime::sandbox::template`): make one ahead of the first container, list them,
//! remove them.

use clap::Subcommand;
use oci_runtime::sandbox::template::{prepare_template, TemplateSettings};
use oci_runtime::sandbox::{GuestArtifacts, VmSize};
use std::process::ExitCode;

/// What `zvm template` does.
#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Make the template for container VMs of this size now (booting the guest kernel once),
    /// unless it exists; prints its id.
    Prepare {
        /// vCPUs of the VMs it is for.
        #[arg(long, default_value_t = oci_runtime::sandbox::DEFAULT_VCPUS)]
        vcpus: u8,
        /// Memory (MiB) of the VMs it is for.
        #[arg(long, default_value_t = oci_runtime::sandbox::DEFAULT_MEMORY_MIB)]
        memory_mib: u64,
    },
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
        TemplateCommand::Prepare { vcpus, memory_mib } => {
            let artifacts = GuestArtifacts::locate().map_err(|e| e.to_string())?;
            let size = VmSize { vcpus, memory_mib };
            let (id, built) =
                prepare_template(&cache, &artifacts, size).map_err(|e| e.to_string())?;
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
