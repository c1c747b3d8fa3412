//! Resolving an image's `User` (`uid`, `uid:gid`, `name`, `name:group`, ...) against the
//! image's own `/etc/passwd` and `/etc/group`, read through [`RootDir`] so that a symlinked
//! `/etc/passwd` cannot point at the host's.

use super::fs::RootDir;
use std::ffi::OsString;
use std::io::{self, Read};

/// `/etc/passwd` and `/etc/group` larger than this are refused.
const MAX_DB: u64 = 8 << 20;

/// Errors resolving a user.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A name not in the image's database.
    #[error("image config User `{spec}`: {kind} `{name}` is not in the image's /etc/{file}")]
    NotFound {
        /// the User value
        spec: String,
        /// "user" or "group"
        kind: &'static str,
        /// the name looked up
        name: String,
        /// "passwd" or "group"
        file: &'static str,
    },
    /// The value is malformed.
    #[error("image config User `{0}`: expected uid, uid:gid, user, user:group (or a mix)")]
    Invalid(String),
    /// The database exists but could not be read.
    #[error("reading the image's /etc/{file}: {source}")]
    Io {
        /// "passwd" or "group"
        file: &'static str,
        /// underlying error
        #[source]
        source: io::Error,
    },
}

/// The identity a container process runs as.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (from `/etc/group` membership of the user's name).
    pub additional_gids: Vec<u32>,
    /// The user's name, when known.
    pub name: Option<String>,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Resolves `spec` (the image config's `User`, maybe empty) inside `root`.
pub fn resolve(root: &RootDir, spec: &str) -> Result<ResolvedUser, Error> {
    let spec = spec.trim();
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if group.is_some_and(|g| g.is_empty() || g.contains(':')) {
        return Err(Error::Invalid(spec.to_string()));
    }
    let user = if user.is_empty() { "0" } else { user };
    let passwd = read_db(root, "passwd")?
        .map(|t| parse_passwd(&t))
        .unwrap_or_default();
    let entry = match user.parse::<u32>() {
        Ok(uid) => passwd.iter().find(|e| e.uid == uid),
        Err(_) => Some(
            passwd
                .iter()
                .find(|e| e.name == user)
                .ok_or_else(|| Error::NotFound {
                    spec: spec.to_string(),
                    kind: "user",
                    name: user.to_string(),
                    file: "passwd",
                })?,
        ),
    };
    let uid = match entry {
        Some(e) => e.uid,
        None => user
            .parse::<u32>()
            .map_err(|_| Error::Invalid(spec.to_string()))?,
    };
    let groups = read_db(root, "group")?
        .map(|t| parse_group(&t))
        .unwrap_or_default();
    let gid = match group {
        None => entry.map(|e| e.gid).unwrap_or(0),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| Error::NotFound {
                    spec: spec.to_string(),
                    kind: "group",
                    name: g.to_string(),
                    file: "group",
                })?,
        },
    };
    let name = entry.map(|e| e.name.clone());
    let mut additional_gids = Vec::new();
    if let Some(n) = &name {
        for g in &groups {
            if g.gid != gid && g.members.iter().any(|m| m == n) && !additional_gids.contains(&g.gid)
            {
                additional_gids.push(g.gid);
            }
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        name,
    })
}

/// Reads `/etc/<file>` of the image, or `None` if it has none.
fn read_db(root: &RootDir, file: &'static str) -> Result<Option<String>, Error> {
    let comps = [OsString::from("etc"), OsString::from(file)];
    let f = match root.open_file(&comps) {
        Ok(f) => f,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(None)
        }
        Err(source) => return Err(Error::Io { file, source }),
    };
    let mut bytes = Vec::new();
    f.take(MAX_DB + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| Error::Io { file, source })?;
    if bytes.len() as u64 > MAX_DB {
        let source = io::Error::new(io::ErrorKind::InvalidData, "file too large");
        return Err(Error::Io { file, source });
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(PasswdEntry {
                name: (*f.first()?).to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(GroupEntry {
                name: (*f.first()?).to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("etc")).unwrap();
        std::fs::write(
            t.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\n# comment\nbroken line\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            t.path().join("etc/group"),
            "root:x:0:\napp:x:1001:\nwheel:x:10:root,app\naudio:x:29:app\n",
        )
        .unwrap();
        t
    }

    #[test]
    fn resolves_names_and_numbers() {
        let t = rootfs();
        let r = RootDir::open(t.path()).unwrap();
        let u = resolve(&r, "").unwrap();
        assert_eq!((u.uid, u.gid, u.name.as_deref()), (0, 0, Some("root")));
        assert_eq!(u.additional_gids, vec![10]);
        let u = resolve(&r, "app").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1001));
        assert_eq!(u.additional_gids, vec![10, 29]);
        let u = resolve(&r, "1000").unwrap();
        assert_eq!((u.uid, u.gid, u.name.as_deref()), (1000, 1001, Some("app")));
        let u = resolve(&r, "app:wheel").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 10));
        assert_eq!(u.additional_gids, vec![29]);
        let u = resolve(&r, "4242:77").unwrap();
        assert_eq!((u.uid, u.gid, u.name), (4242, 77, None));
        let u = resolve(&r, "4242").unwrap();
        assert_eq!((u.uid, u.gid), (4242, 0));
    }

    #[test]
    fn unknown_names_are_clear_errors() {
        let t = rootfs();
        let r = RootDir::open(t.path()).unwrap();
        let e = resolve(&r, "nobody").unwrap_err().to_string();
        assert!(
            e.contains("user `nobody` is not in the image's /etc/passwd"),
            "{e}"
        );
        let e = resolve(&r, "app:staff").unwrap_err().to_string();
        assert!(
            e.contains("group `staff` is not in the image's /etc/group"),
            "{e}"
        );
        assert!(matches!(resolve(&r, "app:"), Err(Error::Invalid(_))));
        assert!(matches!(resolve(&r, "a:b:c"), Err(Error::Invalid(_))));
    }

    #[test]
    fn passwd_symlink_is_followed_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("etc")).unwrap();
        std::fs::write(t.path().join("etc/real"), "inside:x:7:8::/:/bin/sh\n").unwrap();
        // Climbs far above the root: clamped at the root, lands on the image's /etc/real.
        std::os::unix::fs::symlink("../../../../../../etc/real", t.path().join("etc/passwd"))
            .unwrap();
        let r = RootDir::open(t.path()).unwrap();
        let u = resolve(&r, "inside").unwrap();
        assert_eq!((u.uid, u.gid), (7, 8));
        // The host's users are not visible.
        assert!(matches!(resolve(&r, "root"), Err(Error::NotFound { .. })));
        // A self loop is an error, not a hang.
        std::fs::remove_file(t.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", t.path().join("etc/passwd")).unwrap();
        let e = resolve(&r, "inside").unwrap_err();
        assert!(matches!(e, Error::Io { file: "passwd", .. }), "{e}");
    }
}
