//! Parsers for the `key=value,...` device specs of `zvm run`.

use std::path::PathBuf;
use vmm::resources::DriveConfig;

/// Parses a `--disk` spec: `path=FILE[,readonly=on|off][,id=NAME][,root=on|off]`.
/// Disks without an id are named `disk<index>`.
pub fn parse_disk(spec: &str, index: usize) -> Result<DriveConfig, String> {
    let mut path = None;
    let mut read_only = false;
    let mut root = false;
    let mut id = None;
    for part in spec.split(',').filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("invalid disk '{spec}': '{part}' is not key=value"))?;
        match key {
            "path" => path = Some(PathBuf::from(value)),
            "readonly" | "ro" => read_only = on_off(spec, key, value)?,
            "root" | "is_root" => root = on_off(spec, key, value)?,
            "id" => id = Some(value.to_string()),
            other => return Err(format!("invalid disk '{spec}': unknown key '{other}' (use path, readonly, id, root)")),
        }
    }
    let path_on_host = path.ok_or_else(|| format!("invalid disk '{spec}': path=FILE is required"))?;
    Ok(DriveConfig {
        drive_id: id.unwrap_or_else(|| format!("disk{index}")),
        path_on_host,
        is_root_device: root,
        is_read_only: read_only,
    })
}

fn on_off(spec: &str, key: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("invalid disk '{spec}': {key} must be on or off, not '{value}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_and_minimal_disk_specs() {
        let d = parse_disk("path=/img/a.ext4,readonly=on,id=data,root=off", 0).expect("valid");
        assert_eq!(d.path_on_host, PathBuf::from("/img/a.ext4"));
        assert!(d.is_read_only && !d.is_root_device);
        assert_eq!(d.drive_id, "data");
        let d = parse_disk("path=/img/b.raw", 3).expect("valid");
        assert_eq!(d.drive_id, "disk3");
        assert!(!d.is_read_only);
        assert!(parse_disk("path=/r.img,root=on", 0).expect("root").is_root_device);
    }

    #[test]
    fn bad_disk_specs_say_what_is_wrong() {
        assert!(parse_disk("readonly=on", 0).expect_err("no path").contains("path=FILE is required"));
        assert!(parse_disk("path=/a,readonly=maybe", 0).expect_err("bad bool").contains("on or off"));
        assert!(parse_disk("path=/a,cache=none", 0).expect_err("unknown").contains("unknown key 'cache'"));
        assert!(parse_disk("/a.img", 0).expect_err("not kv").contains("not key=value"));
    }
}
