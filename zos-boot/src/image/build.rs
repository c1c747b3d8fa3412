//! Builds the bootable pair: `DIR/vmlinux` and `DIR/initramfs.cpio.gz` (gzip newc cpio,
//! made with the project's `initramfs` crate), or `DIR/initramfs.cpio` (the same archive
//! uncompressed).
//!
//! The initramfs holds only what the node needs: `/sbin/init` (the service manager,
//! zvm-init), `/usr/bin/zvm` (static; the node daemon and its helpers live in it), the
//! services in `/etc/zinit/`, and mkfs.ext4 with the shared libraries and dynamic loader
//! it needs (to format the cache disk on first boot).

use super::boot::{API_SOCK, STATE_DIR};
use super::ImageError;
use initramfs::Entry;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Inputs of an image build.
#[derive(Debug, Clone)]
pub struct ImageInputs {
    /// The guest kernel (vmlinux).
    pub kernel: PathBuf,
    /// A statically linked zvm.
    pub zvm: PathBuf,
    /// The static service manager (zvm-init).
    pub init: PathBuf,
    /// mke2fs on this host (copied with its libraries).
    pub mkfs: PathBuf,
    /// How the initramfs is packed.
    pub packing: InitramfsPacking,
}

/// The default gzip level.
pub const DEFAULT_GZIP_LEVEL: u32 = 6;

/// How the initramfs archive is packed, which also names its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitramfsPacking {
    /// gzip at a level 0 (stored blocks) to 9: `initramfs.cpio.gz`.
    Gzip(u32),
    /// The newc archive as it is: `initramfs.cpio`. The kernel copies it into its root file
    /// system without running its inflate code; several times the size of a compressed
    /// image, but the fastest to boot where the guest kernel's code is slow to run.
    Uncompressed,
}

impl InitramfsPacking {
    /// The initramfs's file name in the image directory.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Gzip(_) => "initramfs.cpio.gz",
            Self::Uncompressed => "initramfs.cpio",
        }
    }

    /// The packing whose file an earlier build may have left beside this one's.
    fn other(self) -> InitramfsPacking {
        match self {
            Self::Gzip(_) => Self::Uncompressed,
            Self::Uncompressed => Self::Gzip(DEFAULT_GZIP_LEVEL),
        }
    }

    /// Packs `entries` this way.
    pub fn pack(self, entries: &[Entry]) -> Result<Vec<u8>, ImageError> {
        match self {
            Self::Gzip(level) => pack_gzip(entries, level),
            Self::Uncompressed => initramfs::pack_uncompressed(entries)
                .map_err(|e| ImageError::Input(format!("cannot pack the initramfs: {e}"))),
        }
    }
}

/// Packs `entries` as a gzip-compressed newc archive at `level` (0-9).
pub fn pack_gzip(entries: &[Entry], level: u32) -> Result<Vec<u8>, ImageError> {
    if level > 9 {
        return Err(ImageError::Input(format!(
            "gzip level {level} is not in 0-9"
        )));
    }
    let pack_err = |e: std::io::Error| ImageError::Io {
        what: "pack the initramfs".into(),
        source: e,
    };
    let mut cpio = initramfs::CpioWriter::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::new(level),
    ));
    for entry in entries {
        cpio.add(entry).map_err(pack_err)?;
    }
    cpio.finish().and_then(|gz| gz.finish()).map_err(pack_err)
}

/// What was built.
#[derive(Debug, Clone)]
pub struct ImageOutput {
    /// `DIR/vmlinux`.
    pub kernel: PathBuf,
    /// `DIR/initramfs.cpio.gz` or `DIR/initramfs.cpio`.
    pub initramfs: PathBuf,
    /// Paths inside the initramfs (files and links), for a listing.
    pub files: Vec<String>,
}

/// The services of the node image: (file name, YAML).
pub fn services() -> Vec<(&'static str, String)> {
    vec![
        ("storage.yaml", "# Formats the cache disk on first boot, mounts it, loads or creates the node identity.\nexec: /usr/bin/zvm node prepare\noneshot: true\n".to_string()),
        (
            "node.yaml",
            format!(
                "# The node daemon; `launch` adds the flags of the zos.api kernel setting.\nexec: /usr/bin/zvm node launch --state-dir {STATE_DIR} --api-sock {API_SOCK}\ntest: /usr/bin/zvm node report --check --api-sock {API_SOCK}\nafter: [storage]\n"
            ),
        ),
        ("report.yaml", format!("# Prints /health and /capacity once the daemon is up.\nexec: /usr/bin/zvm node report --api-sock {API_SOCK}\noneshot: true\nafter: [node]\n")),
    ]
}

fn read(path: &Path) -> Result<Vec<u8>, ImageError> {
    std::fs::read(path).map_err(|source| ImageError::Io {
        what: format!("read {}", path.display()),
        source,
    })
}

pub use initramfs::is_static_elf;

/// The shared libraries `ldd` lists for `binary`, with the dynamic loader.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|source| ImageError::Io {
            what: "run ldd".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(ImageError::Input(format!(
            "ldd {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout)))
}

/// Parses `ldd` output: `libx.so => /path (0x..)` and `/lib64/ld-linux... (0x..)` lines.
pub fn parse_ldd(text: &str) -> Vec<PathBuf> {
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            let p = PathBuf::from(p);
            if !libs.contains(&p) {
                libs.push(p);
            }
        }
    }
    libs
}

fn archive_path(p: &Path) -> String {
    p.to_string_lossy().trim_start_matches('/').to_string()
}

/// Adds `dir` and its parents as directory entries (once each).
fn add_dirs(entries: &mut Vec<Entry>, dir: &str) {
    let mut so_far = String::new();
    for part in dir.split('/').filter(|p| !p.is_empty()) {
        if !so_far.is_empty() {
            so_far.push('/');
        }
        so_far.push_str(part);
        if !entries
            .iter()
            .any(|e| matches!(e, Entry::Dir { path, .. } if *path == so_far))
        {
            entries.push(Entry::Dir {
                path: so_far.clone(),
                mode: 0o755,
            });
        }
    }
}

fn add_file(entries: &mut Vec<Entry>, path: &str, mode: u32, data: Vec<u8>) {
    if let Some((dir, _)) = path.rsplit_once('/') {
        add_dirs(entries, dir);
    }
    entries.push(Entry::File {
        path: path.to_string(),
        mode,
        data,
    });
}

/// The initramfs entries of the node image.
pub fn entries(inputs: &ImageInputs) -> Result<Vec<Entry>, ImageError> {
    let zvm = read(&inputs.zvm)?;
    match is_static_elf(&zvm) {
        Ok(true) => {}
        Ok(false) => return Err(ImageError::Input(format!("{} is dynamically linked; the image needs a static zvm (bash zos-boot/build.sh builds one)", inputs.zvm.display()))),
        Err(e) => return Err(ImageError::Input(format!("{}: {e}", inputs.zvm.display()))),
    }
    let init = read(&inputs.init)?;
    match is_static_elf(&init) {
        Ok(true) => {}
        Ok(false) => return Err(ImageError::Input(format!("{} is dynamically linked; the service manager must be static (guest/build.sh builds it)", inputs.init.display()))),
        Err(e) => return Err(ImageError::Input(format!("{}: {e}", inputs.init.display()))),
    }
    let mut entries = Vec::new();
    for dir in [
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "root",
        "var/cache/zos",
        "etc/zinit",
        "usr/bin",
        "sbin",
    ] {
        add_dirs(&mut entries, dir);
    }
    entries.push(Entry::CharDev {
        path: "dev/console".into(),
        mode: 0o600,
        major: 5,
        minor: 1,
    });
    entries.push(Entry::CharDev {
        path: "dev/null".into(),
        mode: 0o666,
        major: 1,
        minor: 3,
    });
    add_file(&mut entries, "sbin/init", 0o755, init);
    entries.push(Entry::Symlink {
        path: "init".into(),
        target: "/sbin/init".into(),
    });
    add_file(&mut entries, "usr/bin/zvm", 0o755, zvm);
    for (name, yaml) in services() {
        add_file(
            &mut entries,
            &format!("etc/zinit/{name}"),
            0o644,
            yaml.into_bytes(),
        );
    }
    // mkfs.ext4: mke2fs picks the file system type from its name.
    add_file(&mut entries, "sbin/mke2fs", 0o755, read(&inputs.mkfs)?);
    entries.push(Entry::Symlink {
        path: "sbin/mkfs.ext4".into(),
        target: "mke2fs".into(),
    });
    for lib in shared_libraries(&inputs.mkfs)? {
        add_file(&mut entries, &archive_path(&lib), 0o755, read(&lib)?);
    }
    if let Ok(conf) = std::fs::read("/etc/mke2fs.conf") {
        add_file(&mut entries, "etc/mke2fs.conf", 0o644, conf);
    }
    Ok(entries)
}

/// Builds `out/vmlinux` and `out/initramfs.cpio.gz` (or `out/initramfs.cpio`); an initramfs
/// of the other packing left in `out` by an earlier build is removed, so the directory
/// holds one image.
pub fn build(inputs: &ImageInputs, out: &Path) -> Result<ImageOutput, ImageError> {
    let kernel_bytes = read(&inputs.kernel)?;
    if kernel_bytes.get(..4) != Some(b"\x7fELF") {
        return Err(ImageError::Input(format!(
            "{} is not an ELF vmlinux",
            inputs.kernel.display()
        )));
    }
    let entries = entries(inputs)?;
    let packed = inputs.packing.pack(&entries)?;
    std::fs::create_dir_all(out).map_err(|source| ImageError::Io {
        what: format!("create {}", out.display()),
        source,
    })?;
    let write = |name: &str, bytes: &[u8]| -> Result<PathBuf, ImageError> {
        let path = out.join(name);
        let tmp = out.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|source| ImageError::Io {
                what: format!("write {}", path.display()),
                source,
            })?;
        Ok(path)
    };
    let kernel = write("vmlinux", &kernel_bytes)?;
    let initramfs = write(inputs.packing.file_name(), &packed)?;
    let stale = out.join(inputs.packing.other().file_name());
    match std::fs::remove_file(&stale) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(ImageError::Io {
                what: format!("remove the earlier {}", stale.display()),
                source: e,
            })
        }
        _ => {}
    }
    let files = entries
        .iter()
        .filter_map(|e| match e {
            Entry::File { path, .. } | Entry::Symlink { path, .. } => Some(format!("/{path}")),
            _ => None,
        })
        .collect();
    Ok(ImageOutput {
        kernel,
        initramfs,
        files,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibext2fs.so.2 => /lib/x86_64-linux-gnu/libext2fs.so.2 (0x00007f)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x1)\n\t/lib64/ld-linux-x86-64.so.2 (0x2)\n\tlibmissing.so => not found\n";
        let libs = parse_ldd(text);
        assert_eq!(
            libs,
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libext2fs.so.2"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }

    #[test]
    fn static_elf_detection() {
        let sh = std::fs::read("/bin/sh").unwrap();
        assert_eq!(is_static_elf(&sh), Ok(false));
        assert!(is_static_elf(b"#!/bin/sh\n").is_err());
        assert!(is_static_elf(&[0x7f, b'E', b'L', b'F', 2, 1, 0, 0]).is_err());
    }

    #[test]
    fn services_parse_as_the_service_manager_expects() {
        let names: Vec<_> = services().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["storage.yaml", "node.yaml", "report.yaml"]);
        let node = &services()[1].1;
        assert!(
            node.contains("after: [storage]")
                && node.contains("test: /usr/bin/zvm node report --check")
        );
    }

    #[test]
    fn gzip_levels() {
        let entries = vec![Entry::File {
            path: "big".into(),
            mode: 0o644,
            data: vec![7u8; 1 << 20],
        }];
        let stored = pack_gzip(&entries, 0).unwrap();
        let packed = pack_gzip(&entries, 9).unwrap();
        assert_eq!(&stored[..2], b"\x1f\x8b");
        assert!(
            stored.len() > 1 << 20 && packed.len() < 64 << 10,
            "{} {}",
            stored.len(),
            packed.len()
        );
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&stored[..]), &mut out)
            .unwrap();
        assert_eq!(out, initramfs::pack_uncompressed(&entries).unwrap());
        assert!(pack_gzip(&entries, 10)
            .unwrap_err()
            .to_string()
            .contains("not in 0-9"));
    }

    #[test]
    fn uncompressed_packing_is_the_plain_archive_under_its_own_name() {
        let entries = vec![Entry::File {
            path: "big".into(),
            mode: 0o644,
            data: vec![7u8; 4096],
        }];
        let plain = InitramfsPacking::Uncompressed.pack(&entries).unwrap();
        assert_eq!(&plain[..6], b"070701");
        assert_eq!(plain, initramfs::pack_uncompressed(&entries).unwrap());
        assert_eq!(InitramfsPacking::Uncompressed.file_name(), "initramfs.cpio");
        assert_eq!(InitramfsPacking::Gzip(0).file_name(), "initramfs.cpio.gz");
        let gz = InitramfsPacking::Gzip(1).pack(&entries).unwrap();
        assert_eq!(&gz[..2], b"\x1f\x8b");
    }

    #[test]
    fn bad_inputs_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let dynamic = ImageInputs {
            kernel: "/bin/sh".into(),
            zvm: "/bin/sh".into(),
            init: "/bin/sh".into(),
            mkfs: "/bin/sh".into(),
            packing: InitramfsPacking::Gzip(DEFAULT_GZIP_LEVEL),
        };
        let e = entries(&dynamic).unwrap_err().to_string();
        assert!(
            e.contains("dynamically linked") && e.contains("zos-boot/build.sh"),
            "{e}"
        );
        let missing = ImageInputs {
            zvm: dir.path().join("nope"),
            ..dynamic.clone()
        };
        assert!(entries(&missing).unwrap_err().to_string().contains("nope"));
        std::fs::write(dir.path().join("k"), b"not a kernel").unwrap();
        let bad_kernel = ImageInputs {
            kernel: dir.path().join("k"),
            ..dynamic
        };
        assert!(build(&bad_kernel, dir.path())
            .unwrap_err()
            .to_string()
            .contains("not an ELF vmlinux"));
    }
}
