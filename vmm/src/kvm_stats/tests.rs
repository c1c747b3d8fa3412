use super::*;
use std::io::Write;

/// A stats file laid out as KVM does: header, id, descriptors, data.
fn stats_file(name_size: u32, descs: &[(u32, u16, u32, &str)], data: &[u64]) -> File {
    let num = descs.len() as u32;
    let id_offset = HEADER_SIZE as u32;
    let desc_offset = id_offset + name_size;
    let data_offset = desc_offset + num * (DESC_SIZE as u32 + name_size);
    let mut bytes = Vec::new();
    for word in [0, name_size, num, id_offset, desc_offset, data_offset] {
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    bytes.extend(std::iter::repeat_n(0u8, name_size as usize));
    for (flags, size, offset, name) in descs {
        bytes.extend_from_slice(&flags.to_ne_bytes());
        bytes.extend_from_slice(&0i16.to_ne_bytes());
        bytes.extend_from_slice(&size.to_ne_bytes());
        bytes.extend_from_slice(&offset.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        let mut n = name.as_bytes().to_vec();
        n.resize(name_size as usize, 0);
        bytes.extend_from_slice(&n);
    }
    for v in data {
        bytes.extend_from_slice(&v.to_ne_bytes());
    }
    let mut f = tempfile::tempfile().expect("tempfile");
    f.write_all(&bytes).expect("write");
    f
}

#[test]
fn cumulative_counters_are_read_and_summed_over_vcpus() {
    let descs = [
        (TYPE_CUMULATIVE, 1, 0, "exits"),
        (1, 1, 8, "instant_gauge"),
        (TYPE_CUMULATIVE, 1, 16, "mmio_exits"),
        (4, 4, 24, "halt_wait_hist"),
    ];
    let stats = KvmStats::default();
    stats.add(VcpuStats::from_file(stats_file(48, &descs, &[10, 99, 3, 1, 2, 3, 4])).expect("a"));
    stats.add(VcpuStats::from_file(stats_file(48, &descs, &[5, 7, 1, 0, 0, 0, 0])).expect("b"));
    let totals = stats.totals();
    assert_eq!(totals.get("exits"), Some(&Value::from(15u64)));
    assert_eq!(totals.get("mmio_exits"), Some(&Value::from(4u64)));
    assert_eq!(totals.len(), 2, "only cumulative single values: {totals:?}");
}

#[test]
fn malformed_layouts_are_refused() {
    // Absurd counts, data beyond any sane size, a truncated file: errors, no panic.
    let f = stats_file(48, &[(0, 1, 0, "exits")], &[1]);
    let mut header = [0u8; HEADER_SIZE];
    f.read_exact_at(&mut header, 0).expect("read");
    let mut huge = header;
    huge[8..12].copy_from_slice(&u32::MAX.to_ne_bytes());
    let mut g = tempfile::tempfile().expect("tempfile");
    g.write_all(&huge).expect("write");
    assert!(VcpuStats::from_file(g).is_err());
    assert!(VcpuStats::from_file(stats_file(48, &[(0, 1, 1 << 30, "far")], &[])).is_err());
    assert!(
        VcpuStats::from_file(stats_file(48, &[(0, 1, 0, "exits")], &[]))
            .is_ok_and(|s| s.read().is_err())
    );
    assert!(VcpuStats::from_file(tempfile::tempfile().expect("empty")).is_err());
}

#[test]
fn a_real_vcpu_reports_its_exits() {
    let Ok(kvm) = kvm_ioctls::Kvm::new() else {
        println!("skipped: no /dev/kvm here");
        return;
    };
    let vm = kvm.create_vm().expect("vm");
    let vcpu = vm.create_vcpu(0).expect("vcpu");
    let stats = match VcpuStats::open(&vcpu) {
        Ok(stats) => stats,
        Err(e) => {
            println!("skipped: this kernel has no KVM_GET_STATS_FD ({e})");
            return;
        }
    };
    let values = stats.read().expect("read");
    let names: Vec<&str> = values.iter().map(|(n, _)| *n).collect();
    for want in ["exits", "io_exits", "mmio_exits", "halt_exits"] {
        assert!(names.contains(&want), "{want} in {names:?}");
    }
}
