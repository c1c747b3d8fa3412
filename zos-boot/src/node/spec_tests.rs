#![allow(clippy::unwrap_used)]

use super::*;

pub(crate) fn spec(name: &str) -> WorkloadSpec {
    WorkloadSpec::from_json(
        format!(
            r#"{{"name":"{name}","flist":"fake://run","compute":{{"cpu":1,"memory":"256M"}}}}"#
        )
        .as_bytes(),
    )
    .unwrap()
}

fn err(s: &WorkloadSpec) -> String {
    s.validate(&["lan".into()]).unwrap_err().to_string()
}

#[test]
fn a_minimal_spec_is_valid() {
    spec("web-1").validate(&[]).unwrap();
}

#[test]
fn unknown_fields_and_wrong_types_are_refused() {
    let e = WorkloadSpec::from_json(
        br#"{"name":"a","flist":"x","compute":{"cpu":1,"memory":268435456},"gpu":1}"#,
    )
    .unwrap_err();
    assert!(e.to_string().contains("unknown field `gpu`"), "{e}");
    let e =
        WorkloadSpec::from_json(br#"{"name":"a","flist":"x","compute":{"cpu":"one","memory":1}}"#)
            .unwrap_err();
    assert!(e.to_string().contains("invalid type"), "{e}");
    let e = WorkloadSpec::from_json(br#"{"name":"a","compute":{"cpu":1,"memory":1}}"#).unwrap_err();
    assert!(e.to_string().contains("missing field `flist`"), "{e}");
}

#[test]
fn names_must_be_safe_file_names() {
    for bad in [
        "",
        "../etc",
        "a/b",
        ".hidden",
        "-x",
        "sp ace",
        &"x".repeat(65),
    ] {
        let mut s = spec("ok");
        s.name = bad.to_string();
        assert!(err(&s).starts_with("name:"), "{bad:?} accepted");
    }
}

#[test]
fn compute_limits() {
    let mut s = spec("a");
    s.compute.cpu = 0;
    assert!(
        err(&s).contains("compute.cpu: 0 is out of range"),
        "{}",
        err(&s)
    );
    s.compute.cpu = 1;
    s.compute.memory = ByteSize(255 * MIB);
    assert!(
        err(&s).contains("compute.memory: 255 MiB is below the minimum of 256 MiB"),
        "{}",
        err(&s)
    );
    s.compute.memory = ByteSize(256 * MIB + 1);
    assert!(err(&s).contains("not a whole number of MiB"), "{}", err(&s));
}

#[test]
fn disks_are_checked() {
    let mut s = spec("a");
    let disk = |name: &str, size: u64, mp: &str| DiskSpec {
        name: name.into(),
        size: ByteSize(size),
        mountpoint: mp.into(),
    };
    s.disks = vec![disk("data", MIB, "/data"), disk("data", MIB, "/data2")];
    assert!(
        err(&s).contains("disks[1].name: `data` is used by another disk"),
        "{}",
        err(&s)
    );
    s.disks = vec![disk("data", 0, "/data")];
    assert!(err(&s).contains("disks[0].size"), "{}", err(&s));
    s.disks = vec![disk("data", MIB, "data")];
    assert!(err(&s).contains("not an absolute path"), "{}", err(&s));
    s.disks = vec![disk("data", MIB, "/my data")];
    assert!(err(&s).contains("may not contain commas"), "{}", err(&s));
    s.disks = vec![disk("a/b", MIB, "/d")];
    assert!(err(&s).contains("disks[0].name"), "{}", err(&s));
    s.disks = vec![disk("root", MIB, "/d")];
    assert!(err(&s).contains("reserved"), "{}", err(&s));
}

#[test]
fn hostile_volumes_are_refused() {
    let volume = |name: &str, mp: &str| VolumeSpec {
        name: name.into(),
        size: None,
        mountpoint: mp.into(),
    };
    let mut s = spec("a");
    s.volumes = vec![volume("data", "/data")];
    s.validate(&[]).unwrap();
    for (name, mp, why) in [
        ("../../etc", "/d", "volumes[0].name"),
        ("a/b", "/d", "volumes[0].name"),
        ("..", "/d", "volumes[0].name"),
        (".", "/d", "volumes[0].name"),
        ("", "/d", "volumes[0].name"),
        ("d", "d", "not an absolute path"),
        ("d", "/", "may not be /"),
        ("d", "//", "may not be /"),
        ("d", "/x/../../etc", "contain .."),
        ("d", "/a:/b", "colons"),
        ("d", "/a,b", "commas"),
        ("d", "/a b", "blanks"),
        ("d", "/a\0b", "NUL"),
    ] {
        s.volumes = vec![volume(name, mp)];
        let e = err(&s);
        assert!(e.contains(why), "{name:?} {mp:?}: {e}");
    }
    s.volumes = vec![volume("a", "/d"), volume("a", "/e")];
    assert!(err(&s).contains("used by another volume"), "{}", err(&s));
    s.volumes = vec![volume("a", "/d"), volume("b", "/d")];
    assert!(err(&s).contains("used by another disk or volume"));
    s.volumes = (0..=MAX_VOLUMES)
        .map(|i| volume(&format!("v{i}"), &format!("/v{i}")))
        .collect();
    assert!(err(&s).contains("at most 16"), "{}", err(&s));
    let parsed = WorkloadSpec::from_json(
        br#"{"name":"a","flist":"x","compute":{"cpu":1,"memory":"256M"},"rootfs":"ext4",
            "volumes":[{"name":"v","mountpoint":"/v"}]}"#,
    )
    .unwrap();
    assert_eq!(parsed.rootfs, crate::flist_vm::cow_root::RootFs::Ext4);
    let e = WorkloadSpec::from_json(
        br#"{"name":"a","flist":"x","compute":{"cpu":1,"memory":"256M"},"rootfs":"/etc"}"#,
    )
    .unwrap_err();
    assert!(e.to_string().contains("unknown variant"), "{e}");
    let e = WorkloadSpec::from_json(
        br#"{"name":"a","flist":"x","compute":{"cpu":1,"memory":"256M"},
            "volumes":[{"name":"v","mountpoint":"/v","path":"/etc"}]}"#,
    )
    .unwrap_err();
    assert!(e.to_string().contains("unknown field `path`"), "{e}");
}

#[test]
fn volume_sizes_are_checked_and_counted() {
    let mut s = spec("a");
    let sized = |size: u64| VolumeSpec {
        name: "v".into(),
        size: Some(ByteSize(size)),
        mountpoint: "/v".into(),
    };
    for bad in [0, MIB - 1, MAX_DISK + 1, u64::MAX] {
        s.volumes = vec![sized(bad)];
        let e = err(&s);
        assert!(
            e.contains("volumes[0].size") && e.contains("out of range"),
            "{e}"
        );
    }
    s.volumes = vec![sized(2 * MIB)];
    s.validate(&[]).unwrap();
    // The default virtio-fs root's store (1 GiB) and the volume.
    assert_eq!(s.disk_bytes(), (1 << 30) + 2 * MIB);
    s.size = Some(ByteSize(64 * MIB));
    assert_eq!(s.disk_bytes(), 66 * MIB);
    s.volumes = vec![VolumeSpec {
        size: None,
        ..sized(0)
    }];
    assert_eq!(s.disk_bytes(), 64 * MIB + (1 << 30));
    for (json, why) in [
        (r#""size":"lots""#, "invalid size"),
        (r#""size":-1"#, "negative"),
        (r#""size":"99999999999T""#, "too large"),
        (r#""size":1.5"#, "whole number"),
    ] {
        let text = format!(
            r#"{{"name":"a","flist":"x","compute":{{"cpu":1,"memory":"256M"}},
                "volumes":[{{"name":"v","mountpoint":"/v",{json}}}]}}"#
        );
        let e = WorkloadSpec::from_json(text.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains(why), "{json}: {e}");
    }
}

#[test]
fn networks_env_and_arguments_are_checked() {
    let mut s = spec("a");
    s.network.interfaces = vec![InterfaceSpec {
        network: "wan".into(),
        ip: None,
    }];
    assert!(
        err(&s).contains("unknown network `wan` (this node serves: lan)"),
        "{}",
        err(&s)
    );
    s.network.interfaces = vec![InterfaceSpec {
        network: "lan".into(),
        ip: None,
    }];
    s.validate(&["lan".into()]).unwrap();
    s.env.insert("A=B".into(), "x".into());
    assert!(err(&s).contains("not a valid variable name"), "{}", err(&s));
    s.env.clear();
    s.entrypoint = Some("/bin/sh -c 'unterminated".into());
    assert!(err(&s).starts_with("entrypoint:"), "{}", err(&s));
    s.entrypoint = None;
    s.kernel_args = Some("x".repeat(MAX_KERNEL_ARGS + 1));
    assert!(err(&s).starts_with("kernel_args:"), "{}", err(&s));
}
