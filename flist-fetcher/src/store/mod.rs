//! Block stores and the router that shards blocks across them.
//!
//! A [`Store`] keeps ciphertext objects under their 32-byte id. Three schemes
//! are supported, matching rfs:
//! - `dir:///path` ([`dir::DirStore`]),
//! - `http(s)://base` ([`http::HttpStore`], read-only),
//! - `zdb://[user:pass@]host[:port]/namespace` ([`zdb::ZdbStore`]).
//!
//! A [`Router`] maps the first byte of an id to the stores whose inclusive
//! range covers it: writes go to every matching store, reads try them in a
//! random order (with retries) and return the first object that verifies.

pub mod dir;
pub mod http;
pub mod url;
pub mod zdb;

use crate::block::{self, to_hex, Hash};
use crate::meta;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, warn};

pub use self::url::strip_password;

/// Errors from stores and the router.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store URL could not be parsed.
    #[error("invalid store url `{url}`: {reason}")]
    InvalidUrl {
        /// the URL (password stripped)
        url: String,
        /// what is wrong
        reason: String,
    },
    /// The URL names a scheme this crate does not implement.
    #[error("unknown store scheme `{scheme}` in `{url}` (supported: dir, http, https, zdb)")]
    UnknownScheme {
        /// the URL (password stripped)
        url: String,
        /// its scheme
        scheme: String,
    },
    /// A `[start-end=]url` store spec is malformed.
    #[error("invalid store spec `{spec}`: {reason}")]
    InvalidSpec {
        /// the spec (password stripped)
        spec: String,
        /// what is wrong
        reason: String,
    },
    /// The store does not hold the object.
    #[error("{store}: object {id} not found")]
    NotFound {
        /// store URL
        store: String,
        /// object id (hex)
        id: String,
    },
    /// The store cannot be written to.
    #[error("{store}: store is read-only")]
    ReadOnly {
        /// store URL
        store: String,
    },
    /// The store could not be reached.
    #[error("{store}: unreachable: {reason}")]
    Unreachable {
        /// store URL
        store: String,
        /// why
        reason: String,
    },
    /// Local I/O error (dir store).
    #[error("{store}: {source}")]
    Io {
        /// store URL
        store: String,
        /// underlying error
        #[source]
        source: std::io::Error,
    },
    /// The store answered something unexpected.
    #[error("{store}: {reason}")]
    Protocol {
        /// store URL
        store: String,
        /// what happened
        reason: String,
    },
    /// The store returned an object that does not hash to its id.
    #[error("{store}: {source}")]
    Corrupt {
        /// store URL
        store: String,
        /// the verification failure
        #[source]
        source: block::Error,
    },
    /// No route covers the id.
    #[error("no store route covers object {id}")]
    NoRoute {
        /// object id (hex)
        id: String,
    },
    /// Every store of the route failed.
    #[error("object {id}: all stores failed: {}", join(.errors))]
    AllFailed {
        /// object id (hex)
        id: String,
        /// one error per attempt
        errors: Vec<Error>,
    },
}

/// Joins error messages, folding repeats into `(N times)`.
fn join(errors: &[Error]) -> String {
    let mut seen: Vec<(String, usize)> = Vec::new();
    for e in errors {
        let msg = e.to_string();
        match seen.iter_mut().find(|(m, _)| *m == msg) {
            Some((_, n)) => *n += 1,
            None => seen.push((msg, 1)),
        }
    }
    seen.into_iter()
        .map(|(m, n)| if n > 1 { format!("{m} ({n} times)") } else { m })
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// Whether retrying the same store may help.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unreachable { .. }
                | Error::Io { .. }
                | Error::Protocol { .. }
                | Error::Corrupt { .. }
        )
    }
}

/// A key/value store of ciphertext objects named by their 32-byte id.
pub trait Store: Send + Sync {
    /// Fetches the object named `id`.
    fn get(&self, id: &Hash) -> Result<Vec<u8>, Error>;
    /// Stores `data` under `id` (a no-op if the store already holds it).
    fn set(&self, id: &Hash, data: &[u8]) -> Result<(), Error>;
    /// The URL the store was opened from (may contain a password).
    fn url(&self) -> &str;
}

/// Opens the store named by `url` (connections are made lazily).
pub fn open(url: &str) -> Result<Arc<dyn Store>, Error> {
    let parsed = url::StoreUrl::parse(url).map_err(|reason| Error::InvalidUrl {
        url: strip_password(url),
        reason,
    })?;
    Ok(match parsed.scheme.as_str() {
        "dir" => Arc::new(dir::DirStore::from_url(url, &parsed)?),
        "http" | "https" => Arc::new(http::HttpStore::from_url(url, &parsed)?),
        "zdb" => Arc::new(zdb::ZdbStore::from_url(url, &parsed)?),
        other => {
            return Err(Error::UnknownScheme {
                url: strip_password(url),
                scheme: other.to_string(),
            })
        }
    })
}

/// Parses an rfs store spec, `[xx-xx=]URL` (hex bounds, inclusive); a plain URL means `00-ff`.
pub fn parse_spec(spec: &str) -> Result<(u8, u8, String), Error> {
    let invalid = |reason: &str| Error::InvalidSpec {
        spec: strip_password(spec),
        reason: reason.to_string(),
    };
    let b = spec.as_bytes();
    if b.len() > 6
        && b[2] == b'-'
        && b[5] == b'='
        && b[..2].iter().chain(&b[3..5]).all(u8::is_ascii_hexdigit)
    {
        let start = u8::from_str_radix(&spec[..2], 16).map_err(|_| invalid("bad range start"))?;
        let end = u8::from_str_radix(&spec[3..5], 16).map_err(|_| invalid("bad range end"))?;
        if start > end {
            return Err(invalid("range start is after range end"));
        }
        return Ok((start, end, spec[6..].to_string()));
    }
    if spec.is_empty() {
        return Err(invalid("empty"));
    }
    Ok((0x00, 0xff, spec.to_string()))
}

struct Entry {
    start: u8,
    end: u8,
    store: Arc<dyn Store>,
}

/// Routes objects to stores by the first byte of their id.
pub struct Router {
    routes: Vec<Entry>,
    attempts: u32,
    backoff: Duration,
}

impl Default for Router {
    fn default() -> Self {
        Router {
            routes: Vec::new(),
            attempts: 3,
            backoff: Duration::from_millis(100),
        }
    }
}

impl Router {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets how many rounds over a route's stores a read or write makes
    /// before giving up on transient errors (at least 1).
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// Adds a store for ids whose first byte is in `start..=end`.
    pub fn add(&mut self, start: u8, end: u8, store: Arc<dyn Store>) {
        self.routes.push(Entry { start, end, store });
    }

    /// Builds a router from `[xx-xx=]URL` specs (the `--store` arguments).
    pub fn from_specs<S: AsRef<str>>(specs: &[S]) -> Result<Self, Error> {
        let mut router = Router::new();
        for spec in specs {
            let (start, end, url) = parse_spec(spec.as_ref())?;
            router.add(start, end, open(&url)?);
        }
        Ok(router)
    }

    /// Builds a router from an flist's route table.
    pub fn from_routes(routes: &[meta::Route]) -> Result<Self, Error> {
        let mut router = Router::new();
        for r in routes {
            if r.start > r.end {
                warn!(url = %strip_password(&r.url), "route {:02x}-{:02x} is empty", r.start, r.end);
            }
            router.add(r.start, r.end, open(&r.url)?);
        }
        Ok(router)
    }

    /// Whether the router has no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The route table to record in an flist; passwords removed when `strip` is set.
    pub fn routes(&self, strip: bool) -> Vec<meta::Route> {
        self.routes
            .iter()
            .map(|e| meta::Route {
                start: e.start,
                end: e.end,
                url: if strip {
                    strip_password(e.store.url())
                } else {
                    e.store.url().to_string()
                },
            })
            .collect()
    }

    fn matching(&self, id: &Hash) -> Vec<&Arc<dyn Store>> {
        self.routes
            .iter()
            .filter(|e| (e.start..=e.end).contains(&id[0]))
            .map(|e| &e.store)
            .collect()
    }

    /// Fetches and verifies the object `id` from one of its stores.
    pub fn get(&self, id: &Hash) -> Result<Vec<u8>, Error> {
        let mut stores = self.matching(id);
        if stores.is_empty() {
            return Err(Error::NoRoute { id: to_hex(id) });
        }
        let mut errors = Vec::new();
        for attempt in 0..self.attempts {
            if attempt > 0 {
                std::thread::sleep(self.backoff * (1 << (attempt - 1).min(6)));
            }
            fastrand::shuffle(&mut stores);
            let mut transient = false;
            for store in &stores {
                let result = store.get(id).and_then(|data| {
                    block::verify_id(id, &data).map_err(|source| Error::Corrupt {
                        store: strip_password(store.url()),
                        source,
                    })?;
                    Ok(data)
                });
                match result {
                    Ok(data) => return Ok(data),
                    Err(e) => {
                        debug!(id = %to_hex(id), "get failed: {e}");
                        transient |= e.is_transient();
                        errors.push(e);
                    }
                }
            }
            if !transient {
                break;
            }
        }
        Err(Error::AllFailed {
            id: to_hex(id),
            errors,
        })
    }

    /// Writes the object to every store whose range covers its id.
    pub fn set(&self, id: &Hash, data: &[u8]) -> Result<(), Error> {
        let stores = self.matching(id);
        if stores.is_empty() {
            return Err(Error::NoRoute { id: to_hex(id) });
        }
        for store in stores {
            let mut attempt = 0;
            loop {
                match store.set(id, data) {
                    Ok(()) => break,
                    Err(e) if e.is_transient() && attempt + 1 < self.attempts => {
                        warn!(id = %to_hex(id), "write failed, retrying: {e}");
                        std::thread::sleep(self.backoff * (1 << attempt.min(6)));
                        attempt += 1;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Mem {
        name: String,
        map: Mutex<HashMap<Hash, Vec<u8>>>,
    }

    impl Store for Mem {
        fn get(&self, id: &Hash) -> Result<Vec<u8>, Error> {
            self.map
                .lock()
                .unwrap()
                .get(id)
                .cloned()
                .ok_or_else(|| Error::NotFound {
                    store: self.name.clone(),
                    id: to_hex(id),
                })
        }
        fn set(&self, id: &Hash, data: &[u8]) -> Result<(), Error> {
            self.map.lock().unwrap().insert(*id, data.to_vec());
            Ok(())
        }
        fn url(&self) -> &str {
            &self.name
        }
    }

    #[test]
    fn specs() {
        assert_eq!(parse_spec("dir:///a").unwrap(), (0, 255, "dir:///a".into()));
        assert_eq!(
            parse_spec("00-7f=dir:///a").unwrap(),
            (0, 0x7f, "dir:///a".into())
        );
        assert!(parse_spec("80-10=dir:///a").is_err());
        assert!(parse_spec("").is_err());
    }

    #[test]
    fn unknown_scheme() {
        assert!(matches!(
            open("s3://bucket/x"),
            Err(Error::UnknownScheme { .. })
        ));
        assert!(matches!(open("nonsense"), Err(Error::InvalidUrl { .. })));
    }

    #[test]
    fn routing_and_verification() {
        let low = Arc::new(Mem {
            name: "mem://low".into(),
            ..Mem::default()
        });
        let all = Arc::new(Mem {
            name: "mem://all".into(),
            ..Mem::default()
        });
        let mut r = Router::new().with_attempts(1);
        r.add(0x00, 0x7f, low.clone());
        r.add(0x00, 0xff, all.clone());
        let data = b"object".to_vec();
        let mut id = block::hash(&data);
        r.set(&id, &data).unwrap();
        let in_low = id[0] <= 0x7f;
        assert_eq!(low.map.lock().unwrap().len(), usize::from(in_low));
        assert_eq!(all.map.lock().unwrap().len(), 1);
        assert_eq!(r.get(&id).unwrap(), data);

        // a corrupt copy in one store is skipped in favour of a good one
        all.map.lock().unwrap().insert(id, b"garbage".to_vec());
        if in_low {
            for _ in 0..8 {
                assert_eq!(r.get(&id).unwrap(), data);
            }
        } else {
            assert!(matches!(r.get(&id), Err(Error::AllFailed { .. })));
        }
        id[1] ^= 1;
        assert!(matches!(r.get(&id), Err(Error::AllFailed { .. })));
    }

    #[test]
    fn no_route() {
        let mut r = Router::new();
        r.add(0x00, 0x00, Arc::new(Mem::default()));
        let id = [0xffu8; 32];
        assert!(matches!(r.get(&id), Err(Error::NoRoute { .. })));
        assert!(matches!(r.set(&id, b""), Err(Error::NoRoute { .. })));
    }
}
