//! Kernel command line settings of the node image (`zos.*` words):
//!
//! | setting | values | default |
//! |---|---|---|
//! | `zos.runmode` | `dev`, `test`, `prod` | `prod` |
//! | `zos.api` | `unix` (the daemon's Unix socket only), `tcp:ADDR` (also TCP on ADDR) | `unix` |
//! | `zos.disk` | the cache/state disk | `/dev/vda` |
//!
//! In `test` run mode the boot reporter powers the node off once it has printed the
//! daemon's `/health` and `/capacity` (a boot test's whole run).

use super::ImageError;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The node's run mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RunMode {
    /// A developer's node.
    Dev,
    /// A test boot: power off after the boot report.
    Test,
    /// Production.
    #[default]
    Prod,
}

/// Where the node daemon's API is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ApiSetting {
    /// The Unix socket only.
    #[default]
    Unix,
    /// The Unix socket and TCP on this address.
    Tcp(SocketAddr),
}

/// All node settings of one boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSettings {
    /// `zos.runmode`.
    pub runmode: RunMode,
    /// `zos.api`.
    pub api: ApiSetting,
    /// `zos.disk`.
    pub disk: PathBuf,
}

/// The default cache/state disk.
pub const DEFAULT_DISK: &str = "/dev/vda";

impl Default for BootSettings {
    fn default() -> Self {
        BootSettings {
            runmode: RunMode::default(),
            api: ApiSetting::default(),
            disk: PathBuf::from(DEFAULT_DISK),
        }
    }
}

impl BootSettings {
    /// Parses the `zos.*` words of a kernel command line (others are ignored; a later
    /// word wins). Unknown `zos.*` settings and bad values are errors.
    pub fn parse(cmdline: &str) -> Result<BootSettings, ImageError> {
        let mut s = BootSettings::default();
        let bad = |word: &str, why: &str| ImageError::Setting(format!("{word}: {why}"));
        for word in cmdline.split_whitespace() {
            let Some(setting) = word.strip_prefix("zos.") else {
                continue;
            };
            let (key, value) = setting
                .split_once('=')
                .ok_or_else(|| bad(word, "expected zos.KEY=VALUE"))?;
            match key {
                "runmode" => {
                    s.runmode = match value {
                        "dev" => RunMode::Dev,
                        "test" => RunMode::Test,
                        "prod" => RunMode::Prod,
                        _ => return Err(bad(word, "the run mode is dev, test or prod")),
                    }
                }
                "api" => {
                    s.api = match value {
                        "unix" => ApiSetting::Unix,
                        _ => {
                            let addr = value
                                .strip_prefix("tcp:")
                                .ok_or_else(|| bad(word, "expected unix or tcp:ADDR:PORT"))?;
                            ApiSetting::Tcp(addr.parse().map_err(|_| {
                                bad(word, "expected tcp:ADDR:PORT, e.g. tcp:127.0.0.1:8080")
                            })?)
                        }
                    }
                }
                "disk" => {
                    if !value.starts_with("/dev/") || value.contains("..") {
                        return Err(bad(word, "the disk is a device under /dev/"));
                    }
                    s.disk = PathBuf::from(value);
                }
                _ => {
                    return Err(bad(
                        word,
                        "unknown setting (known: zos.runmode, zos.api, zos.disk)",
                    ))
                }
            }
        }
        Ok(s)
    }

    /// The settings of the running kernel (`/proc/cmdline`).
    pub fn from_proc() -> Result<BootSettings, ImageError> {
        let cmdline = std::fs::read_to_string("/proc/cmdline").map_err(|e| ImageError::Io {
            what: "read /proc/cmdline".into(),
            source: e,
        })?;
        BootSettings::parse(&cmdline)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_values() {
        assert_eq!(
            BootSettings::parse("console=ttyS0 quiet").unwrap(),
            BootSettings::default()
        );
        let s = BootSettings::parse(
            "console=ttyS0 zos.runmode=test zos.api=tcp:127.0.0.1:8080 zos.disk=/dev/vdb",
        )
        .unwrap();
        assert_eq!(s.runmode, RunMode::Test);
        assert_eq!(s.api, ApiSetting::Tcp("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(s.disk, PathBuf::from("/dev/vdb"));
        let s = BootSettings::parse("zos.runmode=test zos.runmode=dev zos.api=unix").unwrap();
        assert_eq!((s.runmode, s.api), (RunMode::Dev, ApiSetting::Unix));
    }

    #[test]
    fn bad_values_are_clear_errors() {
        for (cmdline, want) in [
            ("zos.runmode=fast", "dev, test or prod"),
            ("zos.api=tcp:nohost", "tcp:ADDR:PORT"),
            ("zos.api=http", "unix or tcp:ADDR:PORT"),
            ("zos.disk=vda", "under /dev/"),
            ("zos.disk=/dev/../etc/passwd", "under /dev/"),
            ("zos.colour=blue", "unknown setting"),
            ("zos.runmode", "zos.KEY=VALUE"),
        ] {
            let e = BootSettings::parse(cmdline).unwrap_err().to_string();
            assert!(
                e.contains(want) && e.contains(cmdline.split('=').next().unwrap()),
                "{cmdline}: {e}"
            );
        }
    }
}
