//! Command-line front end, embeddable as `zvm flist ...`.
//!
//! ```text
//! #[derive(clap::Subcommand)]
//! enum Cmd { #[command(subcommand)] Flist(flist_fetcher::cli::FlistCommand) }
//! // ...
//! Cmd::Flist(c) => flist_fetcher::cli::run(c)?,
//! ```

use crate::image::{self, ImageOptions};
use crate::inspect;
use crate::meta::Reader;
use crate::pack::{self, PackOptions};
use crate::parallel;
use crate::tree::Tree;
use crate::unpack::{self, UnpackOptions};
use crate::Error;
use clap::Subcommand;
use std::path::PathBuf;

/// Flist operations.
#[derive(Debug, Subcommand)]
pub enum FlistCommand {
    /// Pack a directory into an flist, uploading its blocks to the stores.
    Pack {
        /// Store as `[xx-xx=]URL` (dir:///path, zdb://host:port/ns, ...); repeatable.
        /// The optional hex range shards blocks by the first byte of their id.
        #[arg(short, long = "store", required = true, value_name = "[RANGE=]URL")]
        stores: Vec<String>,
        /// Output flist.
        #[arg(short, long, value_name = "FILE.fl")]
        output: PathBuf,
        /// Tag as KEY=VALUE (version, description, author, or custom); repeatable.
        #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
        /// Keep store passwords in the flist's routes (stripped by default).
        #[arg(long)]
        no_strip_password: bool,
        /// Worker threads.
        #[arg(short, long)]
        jobs: Option<usize>,
        /// Directory to pack.
        dir: PathBuf,
    },
    /// Show an flist's tags, routes, counts and size.
    Inspect {
        /// The flist.
        flist: PathBuf,
        /// Also list every entry.
        #[arg(long)]
        tree: bool,
    },
    /// Materialize an flist as a directory tree.
    Unpack {
        /// Block cache directory.
        #[arg(short, long, value_name = "DIR")]
        cache: PathBuf,
        /// Concurrent block downloads.
        #[arg(long, default_value_t = parallel::DEFAULT_FETCH_JOBS)]
        fetch_jobs: usize,
        /// Worker threads writing files.
        #[arg(short, long)]
        jobs: Option<usize>,
        /// The flist.
        flist: PathBuf,
        /// Target directory (must be empty or absent).
        target: PathBuf,
    },
    /// Build an ext4 disk image from an flist (needs mkfs.ext4; run as root for owners).
    Image {
        /// The flist.
        flist: PathBuf,
        /// Output image file.
        image: PathBuf,
        /// Image size, e.g. 2G, 512M.
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Block cache directory.
        #[arg(short, long, value_name = "DIR")]
        cache: PathBuf,
        /// Filesystem label.
        #[arg(long, default_value = "rootfs")]
        label: String,
        /// Concurrent block downloads.
        #[arg(long, default_value_t = parallel::DEFAULT_FETCH_JOBS)]
        fetch_jobs: usize,
    },
}

fn parse_tag(s: &str) -> Result<(String, String), String> {
    pack::parse_tag(s).map_err(|e| e.to_string())
}

fn parse_size(s: &str) -> Result<u64, String> {
    image::parse_size(s).map_err(|e| e.to_string())
}

/// Runs one flist command, printing results to stdout.
pub fn run(cmd: FlistCommand) -> Result<(), Error> {
    match cmd {
        FlistCommand::Pack {
            stores,
            output,
            tags,
            no_strip_password,
            jobs,
            dir,
        } => {
            let opts = PackOptions {
                stores,
                tags,
                strip_password: !no_strip_password,
                jobs: jobs.unwrap_or_else(parallel::default_pack_jobs),
                progress: true,
            };
            let s = pack::pack(&dir, &output, &opts)?;
            println!(
                "packed {} files, {} dirs, {} symlinks, {} special, {} in {} blocks ({} unique) -> {}",
                s.files,
                s.dirs,
                s.symlinks,
                s.specials,
                inspect::human(s.bytes),
                s.blocks,
                s.unique_blocks,
                output.display()
            );
        }
        FlistCommand::Inspect { flist, tree } => {
            let reader = Reader::open(&flist)?;
            let t = Tree::load(&reader)?;
            println!("{}", inspect::summarize(&reader, &t)?);
            if tree {
                for line in inspect::tree_lines(&t) {
                    println!("{line}");
                }
            }
        }
        FlistCommand::Unpack {
            cache,
            fetch_jobs,
            jobs,
            flist,
            target,
        } => {
            let opts = UnpackOptions {
                fetch_jobs,
                jobs: jobs.unwrap_or_else(parallel::default_jobs),
                progress: true,
                ..UnpackOptions::new(&cache)
            };
            let s = unpack::unpack(&flist, &target, &opts)?;
            println!(
                "unpacked {} files, {} dirs, {} symlinks, {} special ({} skipped), {} ({} blocks fetched) -> {}",
                s.files,
                s.dirs,
                s.symlinks,
                s.specials,
                s.skipped,
                inspect::human(s.bytes),
                s.fetched,
                target.display()
            );
        }
        FlistCommand::Image {
            flist,
            image,
            size,
            cache,
            label,
            fetch_jobs,
        } => {
            let opts = ImageOptions {
                size,
                label,
                unpack: UnpackOptions {
                    fetch_jobs,
                    progress: true,
                    ..UnpackOptions::new(&cache)
                },
            };
            image::image(&flist, &image, &opts)?;
            println!("wrote {} ({})", image.display(), inspect::human(size));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: FlistCommand,
    }

    #[test]
    fn parses_pack() {
        let cli = Cli::try_parse_from([
            "x",
            "pack",
            "--store",
            "00-7f=dir:///a",
            "--store",
            "dir:///b",
            "-o",
            "o.fl",
            "--tag",
            "version=1",
            "src",
        ])
        .unwrap();
        match cli.cmd {
            FlistCommand::Pack {
                stores, tags, dir, ..
            } => {
                assert_eq!(stores.len(), 2);
                assert_eq!(tags, vec![("version".to_string(), "1".to_string())]);
                assert_eq!(dir, PathBuf::from("src"));
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["x", "pack", "-o", "o.fl", "src"]).is_err());
        assert!(Cli::try_parse_from([
            "x", "pack", "-s", "dir:///a", "-o", "o", "--tag", "=v", "s"
        ])
        .is_err());
    }

    #[test]
    fn parses_image_and_unpack() {
        let cli = Cli::try_parse_from([
            "x", "image", "a.fl", "d.img", "--size", "1G", "--cache", "c",
        ])
        .unwrap();
        assert!(matches!(cli.cmd, FlistCommand::Image { size, .. } if size == 1 << 30));
        assert!(Cli::try_parse_from([
            "x", "image", "a.fl", "d.img", "--size", "lots", "--cache", "c"
        ])
        .is_err());
        let cli = Cli::try_parse_from(["x", "unpack", "--cache", "c", "a.fl", "t"]).unwrap();
        assert!(matches!(cli.cmd, FlistCommand::Unpack { .. }));
    }
}
