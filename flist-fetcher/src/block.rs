//! Block codec: the rfs content-addressed, convergent-encryption block format.
//!
//! For a plaintext block `P`:
//! - `key = BLAKE2b-256(P)`
//! - `C = snappy_raw(P)` (raw, not framed)
//! - `ct = AES-256-GCM(key, nonce = key[0..12], aad = none)(C)` with the 16-byte tag appended
//! - `id = BLAKE2b-256(ct)`
//!
//! Stores keep `ct` under `id`; the flist keeps `(id, key)`. Identical plaintext
//! blocks therefore produce identical ids and are stored once.
//!
//! Unlike rfs, [`decrypt`] verifies both hashes: `BLAKE2b(ct) == id` before
//! decrypting and `BLAKE2b(P) == key` afterwards.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use std::fmt;

/// Size of a plaintext block (the last block of a file may be shorter).
pub const BLOCK_SIZE: usize = 512 * 1024;

/// Largest plaintext a block may declare when decompressing. rfs blocks are
/// at most 512 KiB; this bound only guards against decompression bombs.
pub const MAX_PLAIN_LEN: usize = 64 * 1024 * 1024;

/// Length of a block id and of a block key (BLAKE2b-256).
pub const HASH_LEN: usize = 32;

/// A 32-byte BLAKE2b-256 digest.
pub type Hash = [u8; HASH_LEN];

/// Errors of the block codec.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ciphertext does not hash to the id it was stored under.
    #[error("block {expected}: ciphertext hashes to {actual} (corrupt or wrong object)")]
    IdMismatch {
        /// id the block was requested under (hex)
        expected: String,
        /// hash of the data actually received (hex)
        actual: String,
    },
    /// The plaintext does not hash to the key recorded in the flist.
    #[error("block {id}: plaintext hashes to {actual}, flist key is {expected}")]
    KeyMismatch {
        /// block id (hex)
        id: String,
        /// key from the flist (hex)
        expected: String,
        /// hash of the decrypted plaintext (hex)
        actual: String,
    },
    /// AES-GCM authentication failed (wrong key or tampered ciphertext).
    #[error("block {id}: AES-GCM decryption failed (wrong key or tampered data)")]
    Decrypt {
        /// block id (hex)
        id: String,
    },
    /// AES-GCM encryption failed (only on absurd input sizes).
    #[error("AES-GCM encryption failed")]
    Encrypt,
    /// Snappy (de)compression failed.
    #[error("block {id}: snappy: {source}")]
    Snappy {
        /// block id (hex), empty when compressing
        id: String,
        /// underlying error
        #[source]
        source: snap::Error,
    },
    /// The compressed block declares a plaintext larger than [`MAX_PLAIN_LEN`].
    #[error("block {id}: declares {len} bytes of plaintext (limit {MAX_PLAIN_LEN})")]
    TooLarge {
        /// block id (hex)
        id: String,
        /// declared length
        len: usize,
    },
}

/// One block reference as stored in the flist `block` table.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Block {
    /// Store key: BLAKE2b-256 of the ciphertext.
    pub id: Hash,
    /// Encryption key: BLAKE2b-256 of the plaintext.
    pub key: Hash,
}

impl fmt::Debug for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Block({})", to_hex(&self.id))
    }
}

impl Block {
    /// Hex form of the id (the name used by stores and the cache).
    pub fn hex_id(&self) -> String {
        to_hex(&self.id)
    }
}

/// BLAKE2b with a 32-byte digest.
pub fn hash(data: &[u8]) -> Hash {
    let digest = blake2b_simd::Params::new().hash_length(HASH_LEN).hash(data);
    let mut out = [0u8; HASH_LEN];
    out.copy_from_slice(digest.as_bytes());
    out
}

/// Encodes one plaintext block; returns its reference and the ciphertext to store.
pub fn encrypt(plain: &[u8]) -> Result<(Block, Vec<u8>), Error> {
    let key = hash(plain);
    let compressed = snap::raw::Encoder::new()
        .compress_vec(plain)
        .map_err(|source| Error::Snappy {
            id: String::new(),
            source,
        })?;
    let cipher = Aes256Gcm::new(&key.into());
    let ct = cipher
        .encrypt(Nonce::from_slice(&key[..12]), compressed.as_slice())
        .map_err(|_| Error::Encrypt)?;
    let id = hash(&ct);
    Ok((Block { id, key }, ct))
}

/// Checks that `ct` is the object named `id`.
pub fn verify_id(id: &Hash, ct: &[u8]) -> Result<(), Error> {
    let actual = hash(ct);
    if &actual != id {
        return Err(Error::IdMismatch {
            expected: to_hex(id),
            actual: to_hex(&actual),
        });
    }
    Ok(())
}

/// Decodes a ciphertext fetched for `block`, verifying the id before and the key after.
pub fn decrypt(block: &Block, ct: &[u8]) -> Result<Vec<u8>, Error> {
    verify_id(&block.id, ct)?;
    decrypt_verified(block, ct)
}

/// Like [`decrypt`] for a ciphertext whose id was already checked with [`verify_id`]
/// (still checks the plaintext against the key).
pub fn decrypt_verified(block: &Block, ct: &[u8]) -> Result<Vec<u8>, Error> {
    let id = || to_hex(&block.id);
    let cipher = Aes256Gcm::new(&block.key.into());
    let compressed = cipher
        .decrypt(Nonce::from_slice(&block.key[..12]), ct)
        .map_err(|_| Error::Decrypt { id: id() })?;
    let len = snap::raw::decompress_len(&compressed)
        .map_err(|source| Error::Snappy { id: id(), source })?;
    if len > MAX_PLAIN_LEN {
        return Err(Error::TooLarge { id: id(), len });
    }
    let plain = snap::raw::Decoder::new()
        .decompress_vec(&compressed)
        .map_err(|source| Error::Snappy { id: id(), source })?;
    let actual = hash(&plain);
    if actual != block.key {
        return Err(Error::KeyMismatch {
            id: id(),
            expected: to_hex(&block.key),
            actual: to_hex(&actual),
        });
    }
    Ok(plain)
}

/// Lower-case hex encoding.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Decodes hex (either case); `None` on odd length or a non-hex digit.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    };
    s.chunks(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_dedup() {
        let plain = b"hello flist".repeat(1000);
        let (b1, ct1) = encrypt(&plain).unwrap();
        let (b2, ct2) = encrypt(&plain).unwrap();
        assert_eq!(b1, b2);
        assert_eq!(ct1, ct2);
        assert_eq!(decrypt(&b1, &ct1).unwrap(), plain);
    }

    #[test]
    fn empty_block() {
        let (b, ct) = encrypt(b"").unwrap();
        assert_eq!(decrypt(&b, &ct).unwrap(), b"");
    }

    #[test]
    fn tampered_ct_is_id_mismatch() {
        let (b, mut ct) = encrypt(b"some data").unwrap();
        ct[0] ^= 1;
        assert!(matches!(decrypt(&b, &ct), Err(Error::IdMismatch { .. })));
    }

    #[test]
    fn wrong_key_is_detected() {
        let (mut b, ct) = encrypt(b"some data").unwrap();
        b.key[31] ^= 1;
        // the nonce is unchanged but the key differs: GCM authentication fails
        assert!(matches!(decrypt(&b, &ct), Err(Error::Decrypt { .. })));
    }

    #[test]
    fn hex_round_trip() {
        let data = [0u8, 1, 0xab, 0xff];
        assert_eq!(to_hex(&data), "0001abff");
        assert_eq!(from_hex("0001ABff").unwrap(), data);
        assert!(from_hex("abc").is_none());
        assert!(from_hex("zz").is_none());
    }
}
