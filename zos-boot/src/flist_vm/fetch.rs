//! Getting an flist file: a local path, or an http(s) URL downloaded into the cache.

use super::FlistVmError;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The largest flist (metadata database) downloaded.
const MAX_FLIST_BYTES: u64 = 512 << 20;

fn is_url(flist: &str) -> bool {
    flist.starts_with("http://") || flist.starts_with("https://")
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into()
}

fn unreachable(flist: &str, reason: impl Into<String>) -> FlistVmError {
    FlistVmError::Unreachable {
        flist: flist.to_string(),
        reason: reason.into(),
    }
}

/// Checks that an flist can be had: a local file exists, or a URL answers 200 to HEAD
/// (some servers only do GET; a GET that starts with 200 counts too).
pub fn check_reachable(flist: &str) -> Result<(), FlistVmError> {
    if !is_url(flist) {
        let path = Path::new(flist);
        return match path.metadata() {
            Ok(m) if m.is_file() => Ok(()),
            Ok(_) => Err(unreachable(flist, "not a regular file")),
            Err(e) => Err(unreachable(flist, e.to_string())),
        };
    }
    let agent = agent();
    let status = match agent.head(flist).call() {
        Ok(resp) if resp.status().as_u16() == 200 => return Ok(()),
        Ok(resp) => resp.status().as_u16(),
        Err(e) => return Err(unreachable(flist, e.to_string())),
    };
    match agent.get(flist).call() {
        Ok(resp) if resp.status().as_u16() == 200 => Ok(()),
        Ok(resp) => Err(unreachable(
            flist,
            format!("HTTP status {} (HEAD: {status})", resp.status().as_u16()),
        )),
        Err(e) => Err(unreachable(flist, e.to_string())),
    }
}

/// Returns a local path of the flist: `flist` itself, or the URL's download under
/// `<cache_dir>/flists/` (fetched again each time, so a moved tag is followed).
pub fn fetch_flist(flist: &str, cache_dir: &Path) -> Result<PathBuf, FlistVmError> {
    if !is_url(flist) {
        check_reachable(flist)?;
        return Ok(PathBuf::from(flist));
    }
    let dir = cache_dir.join("flists");
    std::fs::create_dir_all(&dir).map_err(|source| FlistVmError::Io {
        path: dir.clone(),
        source,
    })?;
    let hash = url_digest(flist);
    let target = dir.join(format!("{hash}.fl"));
    let mut resp = agent()
        .get(flist)
        .call()
        .map_err(|e| unreachable(flist, e.to_string()))?;
    let code = resp.status().as_u16();
    if code != 200 {
        return Err(unreachable(flist, format!("HTTP status {code}")));
    }
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_FLIST_BYTES)
        .read_to_vec()
        .map_err(|e| unreachable(flist, e.to_string()))?;
    let tmp = dir.join(format!(".{hash}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, &body).map_err(|source| FlistVmError::Io {
        path: tmp.clone(),
        source,
    })?;
    std::fs::rename(&tmp, &target).map_err(|source| FlistVmError::Io {
        path: target.clone(),
        source,
    })?;
    Ok(target)
}

/// A file-name-safe digest of a URL (FNV-1a, 64 bits; collisions only cost a re-download).
fn url_digest(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn local_flists_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let e = check_reachable(dir.path().join("nope.fl").to_str().unwrap()).unwrap_err();
        assert!(e.to_string().contains("is not reachable"), "{e}");
        let e = check_reachable(dir.path().to_str().unwrap()).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let f = dir.path().join("a.fl");
        std::fs::write(&f, b"x").unwrap();
        check_reachable(f.to_str().unwrap()).unwrap();
    }

    #[test]
    fn a_dead_url_is_unreachable() {
        // Port 1 on loopback: connection refused at once.
        let e = check_reachable("http://127.0.0.1:1/x.fl").unwrap_err();
        assert!(
            e.to_string()
                .contains("http://127.0.0.1:1/x.fl` is not reachable"),
            "{e}"
        );
    }
}
