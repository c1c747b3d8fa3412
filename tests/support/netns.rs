//! Network namespaces a test makes for its VMs and their host-side peers.

use std::process::Command;

/// A network namespace the test owns, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    /// Its name (under /var/run/netns).
    pub name: String,
}

impl NetNs {
    /// Creates `zvm<tag>-<pid>` with loopback up.
    pub fn new(tag: &str) -> NetNs {
        let name = format!("zvm{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let ns = NetNs { name };
        ns.ip(&["netns", "add", &ns.name]);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) {
        let out = Command::new("ip")
            .args(args)
            .output()
            .expect("ip (iproute2)");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs a command inside the namespace and asserts it succeeded.
    pub fn exec(&self, cmd: &[&str]) {
        let mut args = vec!["netns", "exec", self.name.as_str()];
        args.extend_from_slice(cmd);
        self.ip(&args);
    }

    /// Runs `f` on a thread that has entered the namespace (for host-side peers).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open the netns");
            // SAFETY: setns on this thread with a valid namespace fd.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
