//! Content-addressed image lists in ThreeFold rfs `.fl` format (see issue #5).
//!
//! An flist is an SQLite database describing a file tree ([`meta`]); file
//! contents are cut into 512 KiB blocks, each compressed, encrypted with its
//! own hash and stored under the hash of the ciphertext ([`block`]) in one or
//! more stores selected by a [`store::Router`]. Flists and stores are
//! interchangeable with rfs.
//!
//! Operations: [`pack::pack`], [`inspect::inspect`], [`unpack::unpack`] and
//! [`image::image`]; [`cli`] exposes them as clap subcommands.
//!
//! Beyond rfs, every block is verified on the way in (ciphertext against its
//! id, plaintext against its key), the cache never trusts a partial or corrupt
//! entry, unpack refuses metadata that could write outside the target, and
//! the gid column is honoured.

pub mod block;
pub mod cache;
pub mod cli;
pub mod ext4;
mod fsutil;
pub mod image;
pub mod inspect;
pub mod meta;
pub mod pack;
pub mod parallel;
pub mod store;
pub mod tree;
pub mod unpack;

pub use block::{Block, BLOCK_SIZE};
pub use cache::Cache;
pub use cli::{run, FlistCommand};
pub use image::{image, ImageOptions};
pub use inspect::{inspect, Summary};
pub use pack::{pack, PackOptions, PackStats};
pub use store::{Router, Store};
pub use unpack::{unpack, UnpackOptions, UnpackStats};

/// Any error of this crate (what [`cli::run`] returns).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the `.fl` file.
    #[error(transparent)]
    Meta(#[from] meta::Error),
    /// Inconsistent or unsafe tree in an flist.
    #[error(transparent)]
    Tree(#[from] tree::Error),
    /// Store or routing failure.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// Block cache failure.
    #[error(transparent)]
    Cache(#[from] cache::Error),
    /// Packing failed.
    #[error(transparent)]
    Pack(#[from] pack::Error),
    /// Inspecting failed.
    #[error(transparent)]
    Inspect(#[from] inspect::Error),
    /// Unpacking failed.
    #[error(transparent)]
    Unpack(#[from] unpack::Error),
    /// Building an image failed.
    #[error(transparent)]
    Image(#[from] image::Error),
}
