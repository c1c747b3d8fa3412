//! A container flist's VM: restored from a template when templates are on and the VM is
//! the shape one is made for (the container command line, with network interfaces and
//! data disks of a template shape: see oci-runtime's `template::shape`), booted otherwise.

use crate::container_log::ContainerLog;
use agent_protocol::network::NetInterface;
use oci_runtime::sandbox::template::shape;
use oci_runtime::sandbox::template::{
    prepare_template_flavour, start_from_template, ContainerVm, TemplateSettings,
};
use oci_runtime::sandbox::GuestArtifacts;
use vmm::builder::BuildOptions;
use vmm::{RunningVm, VmResources};

/// Starts the VM `resources` describe for a container flist, its console going to `log`.
/// Returns the VM and, when it was restored from a template with network interfaces, the
/// network its agent must be given (empty for a booted VM: its kernel and agent took
/// theirs from the command line).
pub fn start(
    resources: &VmResources,
    opts: BuildOptions,
    log: &ContainerLog,
) -> Result<(RunningVm, Vec<NetInterface>), vmm::BuildError> {
    let settings = TemplateSettings::from_env();
    if settings.enabled {
        match from_template(resources, &settings, log) {
            Ok(restored) => return Ok(restored),
            Err(why) => tracing::info!("booting the kernel: {why}"),
        }
    } else {
        tracing::info!("templates are off; booting the kernel");
    }
    vmm::builder::build_microvm_with_console(resources, opts, log.console_sink(), false)
        .map(|vm| (vm, Vec::new()))
}

/// Makes the template of a VM `resources` describe when templates are on and one fits
/// (a jail's supervisor does, so that its jailed half only restores); failures are left
/// to [`start`], which then boots.
pub fn prepare_template(resources: &VmResources) {
    let settings = TemplateSettings::from_env();
    if !settings.enabled {
        return;
    }
    let Ok(agent) = GuestArtifacts::locate_agent() else {
        return;
    };
    let artifacts = GuestArtifacts {
        kernel: resources.boot_source.kernel_image_path.clone(),
        agent,
    };
    let Ok(vm) = ContainerVm::from_resources(resources, &artifacts) else {
        return;
    };
    if !vm.extras.nets.is_empty() || !vm.extras.data_disks.is_empty() {
        match shape::prepare_template_for(&settings.cache(), &vm) {
            Ok((id, Some(took))) => {
                tracing::info!("made template {id} in {:.1} s", took.as_secs_f64())
            }
            Ok((_, None)) => {}
            Err(e) => tracing::info!("no template: {e}"),
        }
        return;
    }
    // The flavour with a share for a root over virtio-fs or volumes.
    let share = vm.share.is_some();
    match prepare_template_flavour(&settings.cache(), &artifacts, vm.size, share) {
        Ok((id, Some(took))) => {
            tracing::info!("made template {id} in {:.1} s", took.as_secs_f64())
        }
        Ok((_, None)) => {}
        Err(e) => tracing::info!("no template: {e}"),
    }
}

fn from_template(
    resources: &VmResources,
    settings: &TemplateSettings,
    log: &ContainerLog,
) -> Result<(RunningVm, Vec<NetInterface>), String> {
    let artifacts = GuestArtifacts {
        kernel: resources.boot_source.kernel_image_path.clone(),
        agent: GuestArtifacts::locate_agent().map_err(|e| e.to_string())?,
    };
    let vm = ContainerVm::from_resources(resources, &artifacts)
        .map_err(|why| format!("no template fits this VM: {why}"))?;
    let started = start_from_template(&settings.cache(), &vm, &|| Ok(log.console_sink()))
        .map_err(|e| format!("no template: {e}"))?;
    if let Some(took) = started.built_in {
        tracing::info!(
            "made template {} in {:.1} s",
            started.template,
            took.as_secs_f64()
        );
    }
    tracing::info!("VM restored from template {}", started.template);
    // Taken before the restore too: a command line it cannot read fits no template.
    let network = shape::guest_network(resources);
    let network = network.inspect_err(|_| {
        let _ = started.vm.stop_handle().and_then(|s| s.request_stop());
    })?;
    if !network.is_empty() {
        let macs: Vec<_> = network
            .iter()
            .map(|n| format!("{} {}", n.name, agent_protocol::network::format_mac(&n.mac)))
            .collect();
        tracing::info!("the agent sets the clone's network: {}", macs.join(", "));
    }
    Ok((started.vm, network))
}
