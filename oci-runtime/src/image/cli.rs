//! Command-line arguments and runners for `zvm oci unpack` and `zvm flist from-oci`.

use super::flist::{self, FromOciOptions};
use super::{unpack_bundle, ImageRef};
use std::path::PathBuf;

/// `unpack IMAGE_LAYOUT_DIR[:TAG] BUNDLE_DIR`: make a runtime bundle from an OCI image layout.
#[derive(Debug, Clone, clap::Args)]
pub struct UnpackArgs {
    /// OCI image layout directory, optionally with `:TAG` (its
    /// org.opencontainers.image.ref.name); without a tag the layout must hold one image.
    #[arg(value_name = "IMAGE_LAYOUT_DIR[:TAG]")]
    pub image: String,
    /// Bundle directory to create (absent or empty): rootfs/ and config.json go there.
    #[arg(value_name = "BUNDLE_DIR")]
    pub bundle: PathBuf,
}

/// `from-oci IMAGE_LAYOUT_DIR[:TAG] -o OUT.fl --store URL`: make an flist from an OCI image.
#[derive(Debug, Clone, clap::Args)]
pub struct FromOciArgs {
    /// OCI image layout directory, optionally with `:TAG`.
    #[arg(value_name = "IMAGE_LAYOUT_DIR[:TAG]")]
    pub image: String,
    /// Output flist.
    #[arg(short, long, value_name = "FILE.fl")]
    pub output: PathBuf,
    /// Store as `[xx-xx=]URL` (dir:///path, zdb://host:port/ns, ...); repeatable.
    #[arg(short, long = "store", required = true, value_name = "[RANGE=]URL")]
    pub stores: Vec<String>,
    /// Tag as KEY=VALUE (version, description, author, or custom); repeatable.
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,
    /// Keep store passwords in the flist's routes (stripped by default).
    #[arg(long)]
    pub no_strip_password: bool,
    /// Worker threads for packing.
    #[arg(short, long)]
    pub jobs: Option<usize>,
    /// Directory for the temporary root filesystem (default: the system's temp directory;
    /// it needs room for the whole unpacked image).
    #[arg(long, value_name = "DIR")]
    pub tmp_dir: Option<PathBuf>,
}

fn parse_tag(s: &str) -> Result<(String, String), String> {
    flist_fetcher::pack::parse_tag(s).map_err(|e| e.to_string())
}

/// Runs `unpack`, printing a summary line.
pub fn run_unpack(args: &UnpackArgs) -> Result<(), super::Error> {
    let image = ImageRef::parse(&args.image);
    let u = unpack_bundle(&image, &args.bundle)?;
    let s = &u.stats;
    println!(
        "unpacked {} ({} layers): {} files, {} dirs, {} symlinks, {} hard links, {} special, {} whiteouts, {} skipped, {} bytes -> {}",
        u.image.descriptor.digest(),
        u.image.manifest.layers().len(),
        s.files,
        s.dirs,
        s.symlinks,
        s.hardlinks,
        s.specials,
        s.whiteouts,
        s.skipped,
        s.bytes,
        args.bundle.display()
    );
    Ok(())
}

/// Runs `from-oci`, printing a summary line.
pub fn run_from_oci(args: &FromOciArgs) -> Result<(), flist::Error> {
    let image = ImageRef::parse(&args.image);
    let opts = FromOciOptions {
        pack: flist_fetcher::PackOptions {
            stores: args.stores.clone(),
            tags: args.tags.clone(),
            strip_password: !args.no_strip_password,
            jobs: args
                .jobs
                .unwrap_or_else(flist_fetcher::parallel::default_pack_jobs),
            progress: true,
        },
        tmp_dir: args.tmp_dir.clone(),
    };
    let s = flist::from_oci(&image, &args.output, &opts)?;
    println!(
        "packed {} ({}): {} files, {} dirs, {} symlinks, {} special, {} bytes in {} blocks; entrypoint {:?} -> {}",
        image,
        s.config.manifest_digest,
        s.pack.files,
        s.pack.dirs,
        s.pack.symlinks,
        s.pack.specials,
        s.pack.bytes,
        s.pack.unique_blocks,
        s.config.process.args,
        args.output.display()
    );
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    enum Cmd {
        Unpack(UnpackArgs),
        FromOci(FromOciArgs),
    }

    #[test]
    fn parses_arguments() {
        let c = Cmd::try_parse_from(["x", "unpack", "img:latest", "b"]).unwrap();
        assert!(matches!(c, Cmd::Unpack(UnpackArgs { ref image, .. }) if image == "img:latest"));
        assert!(Cmd::try_parse_from(["x", "unpack", "img"]).is_err());
        let c = Cmd::try_parse_from([
            "x", "from-oci", "img", "-o", "o.fl", "-s", "dir:///s", "--tag", "a=b",
        ])
        .unwrap();
        match c {
            Cmd::FromOci(a) => {
                assert_eq!(a.stores, ["dir:///s"]);
                assert_eq!(a.tags, [("a".to_string(), "b".to_string())]);
            }
            other => panic!("{other:?}"),
        }
        assert!(Cmd::try_parse_from(["x", "from-oci", "img", "-o", "o.fl"]).is_err());
    }
}
