//! How small a VMM process can be: a VM built straight from a resources JSON file (the
//! `zvm run --config` format) with nothing but the vmm crate linked in. Used to measure
//! the memory floor and start cost of a lean VMM executable against the full zvm binary
//! (benches/README.md, "Footprint of a lean VMM").
//!
//!     cargo build --release -p vmm --example lean_vmm
//!     target/release/examples/lean_vmm RESOURCES.json
//!
//! `LEAN_VMM_NO_IRQCHIP=1` builds the VM without the in-kernel irqchip (only for tiny
//! guests that need no interrupts), to measure what it costs at teardown; the PIT
//! follows the resources' `machine-config` (`"pit": true`).

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: lean_vmm RESOURCES.json");
        std::process::exit(2);
    };
    let resources: vmm::VmResources = match std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|text| serde_json::from_str(&text).map_err(|e| e.to_string()))
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lean_vmm: {path}: {e}");
            std::process::exit(2);
        }
    };
    let opts = vmm::builder::BuildOptions {
        irqchip: std::env::var_os("LEAN_VMM_NO_IRQCHIP").is_none(),
        ..Default::default()
    };
    match vmm::builder::build_microvm(&resources, opts) {
        Ok(vm) => {
            let outcome = vm.wait();
            std::process::exit(i32::from(!outcome.is_clean()));
        }
        Err(e) => {
            eprintln!("lean_vmm: {e}");
            std::process::exit(1);
        }
    }
}
