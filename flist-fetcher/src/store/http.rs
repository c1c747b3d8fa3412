//! `http(s)://base` store (read-only).
//!
//! Objects are fetched from `base/<hex[0..2]>/<hex>`, falling back to the
//! flat `base/<hex>` on 404, as rfs does. `https://` needs the crate's `tls`
//! feature.

use super::url::StoreUrl;
use super::{strip_password, Error, Store};
use crate::block::{to_hex, Hash, MAX_PLAIN_LEN};
use std::time::Duration;

/// A read-only store behind an HTTP server.
pub struct HttpStore {
    url: String,
    name: String,
    base: String,
    agent: ureq::Agent,
}

enum Outcome {
    Found(Vec<u8>),
    Missing,
}

impl HttpStore {
    /// Opens `http(s)://base`.
    pub fn from_url(url: &str, parsed: &StoreUrl) -> Result<Self, Error> {
        let name = strip_password(url);
        if parsed.host.is_empty() {
            return Err(Error::InvalidUrl {
                url: name,
                reason: "missing host".into(),
            });
        }
        if parsed.scheme == "https" && !cfg!(feature = "tls") {
            return Err(Error::InvalidUrl {
                url: name,
                reason: "https support is not compiled in (flist-fetcher feature `tls`)".into(),
            });
        }
        let base = match url.split_once('?') {
            Some((b, _)) => b,
            None => url,
        }
        .trim_end_matches('/')
        .to_string();
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_global(Some(Duration::from_secs(120)))
            .build();
        Ok(HttpStore {
            url: url.to_string(),
            name,
            base,
            agent: config.into(),
        })
    }

    fn fetch(&self, url: &str) -> Result<Outcome, Error> {
        let mut resp = self.agent.get(url).call().map_err(|e| self.transport(e))?;
        match resp.status().as_u16() {
            200 => {
                let body = resp
                    .body_mut()
                    .with_config()
                    // ciphertext is at most the compressed plaintext plus overhead
                    .limit(MAX_PLAIN_LEN as u64 + (MAX_PLAIN_LEN as u64 / 6) + 1024)
                    .read_to_vec()
                    .map_err(|e| self.transport(e))?;
                Ok(Outcome::Found(body))
            }
            404 | 410 => Ok(Outcome::Missing),
            code => Err(Error::Protocol {
                store: self.name.clone(),
                reason: format!("GET {}: HTTP status {code}", strip_password(url)),
            }),
        }
    }

    fn transport(&self, e: ureq::Error) -> Error {
        match e {
            ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::HostNotFound
            | ureq::Error::ConnectionFailed => Error::Unreachable {
                store: self.name.clone(),
                reason: e.to_string(),
            },
            other => Error::Protocol {
                store: self.name.clone(),
                reason: other.to_string(),
            },
        }
    }
}

impl Store for HttpStore {
    fn get(&self, id: &Hash) -> Result<Vec<u8>, Error> {
        let hex = to_hex(id);
        for url in [
            format!("{}/{}/{hex}", self.base, &hex[..2]),
            format!("{}/{hex}", self.base),
        ] {
            if let Outcome::Found(data) = self.fetch(&url)? {
                return Ok(data);
            }
        }
        Err(Error::NotFound {
            store: self.name.clone(),
            id: hex,
        })
    }

    fn set(&self, _id: &Hash, _data: &[u8]) -> Result<(), Error> {
        Err(Error::ReadOnly {
            store: self.name.clone(),
        })
    }

    fn url(&self) -> &str {
        &self.url
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn https_without_tls_is_a_clear_error() {
        let parsed = StoreUrl::parse("https://hub.example/blocks").unwrap();
        let r = HttpStore::from_url("https://hub.example/blocks", &parsed);
        assert_eq!(r.is_err(), !cfg!(feature = "tls"));
    }

    #[test]
    fn read_only() {
        let parsed = StoreUrl::parse("http://127.0.0.1:1/").unwrap();
        let s = HttpStore::from_url("http://127.0.0.1:1/", &parsed).unwrap();
        assert_eq!(s.base, "http://127.0.0.1:1");
        assert!(matches!(s.set(&[0; 32], b""), Err(Error::ReadOnly { .. })));
    }

    #[test]
    fn unreachable() {
        // port 1 on loopback is closed
        let parsed = StoreUrl::parse("http://127.0.0.1:1/").unwrap();
        let s = HttpStore::from_url("http://127.0.0.1:1/", &parsed).unwrap();
        assert!(matches!(s.get(&[0; 32]), Err(Error::Unreachable { .. })));
    }
}
