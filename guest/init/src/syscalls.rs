//! A self-check that makes a few hundred system calls of different kinds and verifies
//! every result, to show the kernel's system-call path is correct, not just alive. Kept to
//! hundreds: where guest kernel code is emulated (KVM PVM hosts) each call costs ~17 ms,
//! and four thousand of them took 71 s of a boot test.

use std::ffi::CString;

type Check = Result<u64, String>;

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn ensure(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what()) }
}

/// getpid through the raw system call, 100 times.
fn getpid_loop() -> Check {
    for _ in 0..100 {
        // SAFETY: raw getpid.
        let pid = unsafe { libc::syscall(libc::SYS_getpid) };
        ensure(pid == 1, || format!("getpid returned {pid}, expected 1"))?;
    }
    Ok(100)
}

/// clock_gettime through the raw system call (not the vDSO), monotonic.
fn clock_loop() -> Check {
    let mut last = (0i64, 0i64);
    for _ in 0..100 {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: ts is a valid timespec.
        let rc = unsafe { libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC, &mut ts) };
        ensure(rc == 0, || format!("clock_gettime: {}", errno()))?;
        let now = (ts.tv_sec, ts.tv_nsec);
        ensure(now >= last, || format!("clock went backwards: {last:?} -> {now:?}"))?;
        last = now;
    }
    Ok(100)
}

/// Create, write, seek, read, fstat, close, unlink on tmpfs.
fn file_io_loop() -> Check {
    let mut calls = 0;
    let mut buf = vec![0u8; 4096];
    for i in 0..20u32 {
        let path = CString::new(format!("/tmp/zvm-check-{i}")).map_err(|e| e.to_string())?;
        let data: Vec<u8> = (0..4096u32).map(|j| (i.wrapping_mul(31).wrapping_add(j) % 251) as u8).collect();
        // SAFETY: path, data and buf are valid for the lengths passed.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_CREAT | libc::O_RDWR | libc::O_TRUNC, 0o600);
            ensure(fd >= 0, || format!("open: {}", errno()))?;
            let n = libc::write(fd, data.as_ptr().cast(), data.len());
            ensure(n == 4096, || format!("write returned {n}: {}", errno()))?;
            ensure(libc::lseek(fd, 0, libc::SEEK_SET) == 0, || format!("lseek: {}", errno()))?;
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            ensure(n == 4096 && buf == data, || format!("read back {n} bytes that differ"))?;
            let mut st: libc::stat = std::mem::zeroed();
            ensure(libc::fstat(fd, &mut st) == 0 && st.st_size == 4096, || format!("fstat size {}", st.st_size))?;
            ensure(libc::close(fd) == 0, || format!("close: {}", errno()))?;
            ensure(libc::unlink(path.as_ptr()) == 0, || format!("unlink: {}", errno()))?;
            ensure(libc::access(path.as_ptr(), libc::F_OK) != 0, || "file still exists after unlink".into())?;
        }
        calls += 8;
    }
    Ok(calls)
}

/// Messages through a pipe.
fn pipe_loop() -> Check {
    let mut fds = [0i32; 2];
    // SAFETY: fds has room for two descriptors.
    ensure(unsafe { libc::pipe(fds.as_mut_ptr()) } == 0, || format!("pipe: {}", errno()))?;
    let mut calls = 1;
    for i in 0..25u32 {
        let msg = i.to_le_bytes();
        let mut back = [0u8; 4];
        // SAFETY: buffers valid for 4 bytes.
        unsafe {
            ensure(libc::write(fds[1], msg.as_ptr().cast(), 4) == 4, || format!("pipe write: {}", errno()))?;
            ensure(libc::read(fds[0], back.as_mut_ptr().cast(), 4) == 4, || format!("pipe read: {}", errno()))?;
        }
        ensure(back == msg, || format!("pipe returned {back:?}, sent {msg:?}"))?;
        calls += 2;
    }
    // SAFETY: closing our own descriptors.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    Ok(calls + 2)
}

/// fork, child exits with a code, parent waits and checks it.
fn fork_loop() -> Check {
    for i in 0..5 {
        // SAFETY: the child only calls _exit.
        let pid = unsafe { libc::fork() };
        ensure(pid >= 0, || format!("fork: {}", errno()))?;
        if pid == 0 {
            // SAFETY: leaving the child immediately.
            unsafe { libc::_exit(i + 3) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        ensure(waited == pid, || format!("waitpid returned {waited}: {}", errno()))?;
        ensure(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == i + 3, || format!("child status {status:#x}, expected exit {}", i + 3))?;
    }
    Ok(10)
}

/// Anonymous mappings: map, touch, check, unmap.
fn mmap_loop() -> Check {
    const LEN: usize = 64 * 1024;
    for i in 0..20usize {
        // SAFETY: a fresh private anonymous mapping we own until munmap.
        unsafe {
            let p = libc::mmap(std::ptr::null_mut(), LEN, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
            ensure(p != libc::MAP_FAILED, || format!("mmap: {}", errno()))?;
            let bytes = std::slice::from_raw_parts_mut(p as *mut u8, LEN);
            ensure(bytes.iter().all(|b| *b == 0), || "fresh mapping not zeroed".into())?;
            bytes[i] = 0xa5;
            bytes[LEN - 1 - i] = 0x5a;
            ensure(bytes[i] == 0xa5 && bytes[LEN - 1 - i] == 0x5a, || "mapping lost a write".into())?;
            ensure(libc::munmap(p, LEN) == 0, || format!("munmap: {}", errno()))?;
        }
    }
    Ok(40)
}

/// Runs every check; returns the number of system calls made.
pub fn run_check() -> Result<u64, String> {
    let checks: [(&str, fn() -> Check); 6] = [
        ("getpid", getpid_loop),
        ("clock_gettime", clock_loop),
        ("file I/O on tmpfs", file_io_loop),
        ("pipes", pipe_loop),
        ("fork+wait", fork_loop),
        ("mmap", mmap_loop),
    ];
    let mut total = 0;
    for (name, check) in checks {
        total += check().map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(total)
}
