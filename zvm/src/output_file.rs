//! `zvm run --output PATH`: zvm's standard output and error (the guest console on stdio,
//! a container's output, zvm's own messages) go to PATH, which never grows past a limit:
//! when the next write would pass it, PATH becomes PATH.1 (replacing the previous one) and
//! a new PATH starts. A guest that prints forever therefore takes at most twice the limit
//! of disk. The process's stdout and stderr become a pipe that a thread of this process
//! copies into the file, so it keeps working when whoever started zvm is gone.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread::JoinHandle;

/// A file that is rotated to `PATH.1` instead of growing past `max` bytes.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    file: File,
    len: u64,
    max: u64,
}

impl RotatingFile {
    /// Appends to `path` (created if missing), keeping it at most `max` bytes (at least 1).
    pub fn open(path: &Path, max: u64) -> io::Result<Self> {
        let file = File::options().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_path_buf(),
            file,
            len,
            max: max.max(1),
        })
    }

    fn rotate(&mut self) -> io::Result<()> {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, &old)?;
        self.file = File::options()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.path)?;
        self.len = 0;
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.len > 0 && self.len.saturating_add(buf.len() as u64) > self.max {
            self.rotate()?;
        }
        // Never more than the limit in one file, even from one large write.
        let room = usize::try_from(self.max - self.len.min(self.max)).unwrap_or(usize::MAX);
        let n = self.file.write(&buf[..buf.len().min(room.max(1))])?;
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// The copying thread, joined by [`finish`].
static COPIER: Mutex<Option<JoinHandle<()>>> = Mutex::new(None);

/// Sends this process's stdout and stderr to `path`, rotated at `max` bytes.
pub fn redirect(path: &Path, max: u64) -> io::Result<()> {
    let mut out = RotatingFile::open(path, max)?;
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned here.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let copier = std::thread::Builder::new()
        .name("zvm_output".into())
        .spawn(move || {
            let mut pipe = File::from(read_end);
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        // A full disk loses output, never the VM.
                        let _ = out.write_all(&buf[..n]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = out.flush();
        })?;
    let _ = io::stdout().flush();
    for target in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: dup2 onto the standard descriptors; the pipe's write end stays open.
        if unsafe { libc::dup2(write_end.as_raw_fd(), target) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    drop(write_end);
    *COPIER.lock().unwrap_or_else(|p| p.into_inner()) = Some(copier);
    Ok(())
}

/// In a child forked from this process (a jail's half), which has no copier thread:
/// forgets the parent's, so that [`finish`] does not wait for it.
pub fn forget_copier() {
    if let Some(copier) = COPIER.lock().unwrap_or_else(|p| p.into_inner()).take() {
        std::mem::forget(copier);
    }
}

/// Closes stdout and stderr (to /dev/null) and waits until everything written to them is
/// in the file. Does nothing without [`redirect`].
pub fn finish() {
    let Some(copier) = COPIER.lock().unwrap_or_else(|p| p.into_inner()).take() else {
        return;
    };
    let _ = io::stdout().flush();
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        for target in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
            // SAFETY: dup2 of an open descriptor onto the standard ones.
            unsafe { libc::dup2(null.as_raw_fd(), target) };
        }
    }
    let _ = copier.join();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_rotated_before_it_passes_the_limit() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("out.log");
        let mut f = RotatingFile::open(&path, 100).expect("open");
        for i in 0..50 {
            f.write_all(format!("line {i:04}\n").as_bytes())
                .expect("write");
        }
        let now = std::fs::read_to_string(&path).expect("current");
        let old = std::fs::read_to_string(dir.path().join("out.log.1")).expect("rotated");
        assert!(
            now.len() <= 100 && old.len() <= 100,
            "{} {}",
            now.len(),
            old.len()
        );
        let all: String = (0..50).map(|i| format!("line {i:04}\n")).collect();
        assert!(
            all.ends_with(&format!("{old}{now}")),
            "the two files hold the latest output, in order: {old}{now}"
        );
        // One write larger than the limit is split, never one oversized file.
        f.write_all(&[b'x'; 250]).expect("write");
        assert!(std::fs::metadata(&path).expect("meta").len() <= 100);
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("dir").count(),
            2,
            "PATH and PATH.1 only"
        );
    }
}
