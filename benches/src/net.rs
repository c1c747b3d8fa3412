//! Network throughput: TCP from the guest to a host thread and back, over virtio-net on a
//! tap device in a network namespace, measured in the guest and on the host, under zvm
//! and QEMU `-M microvm`; plus the VMM process's host CPU time per MiB moved.

use crate::devices::{self, field, parse_fields, DeviceConfig, Devices, PhaseRun};
use crate::error::Result;
use crate::kvm_breakdown::{
    closing_script, idle_script, Breakdown, CounterRates, IDLE_MARKERS, IO_MARKERS, IRQS_END,
};
use crate::measure::{fmt_opt, median, ratio};
use crate::netns::{NetNs, GUEST_IP, HOST_IP};
use crate::vmms::{order, Launcher, Vmm};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Markers: around the idle window, before the guest sends, between sending and
/// receiving, after receiving, after the guest's last interrupt counts.
const MARKERS: [&str; 6] = [
    IDLE_MARKERS[0],
    IDLE_MARKERS[1],
    IO_MARKERS[0],
    "BENCH-MID",
    IO_MARKERS[1],
    IRQS_END,
];
/// Indexes into [`MARKERS`]: the idle window, then start, middle and end of the I/O.
const IDLE: (usize, usize) = (0, 1);
const START: usize = 2;
const MID: usize = 3;
const END: usize = 4;
/// Host port of the guest-to-host stream.
const SEND_PORT: u16 = 7000;
/// Host port of the host-to-guest stream.
const RECV_PORT: u16 = 7001;
const MIB: f64 = (1u64 << 20) as f64;

/// A parsed `NET dir=.. bytes=.. secs=.. mib_s=..` line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NetResult {
    /// Bytes moved.
    pub bytes: f64,
    /// MiB/s measured in the guest.
    pub mib_s: f64,
}

/// Parses the guest's line for direction `dir` (`send` or `recv`).
pub fn parse_net(line: &str, dir: &str) -> Option<NetResult> {
    let rest = line.trim().strip_prefix("NET ")?;
    if !rest.split_whitespace().any(|kv| kv == format!("dir={dir}")) {
        return None;
    }
    let f = parse_fields(line, "NET")?;
    Some(NetResult {
        bytes: field(&f, "bytes")?,
        mib_s: field(&f, "mib_s")?,
    })
}

/// The guest script: the idle window (eth0 still down, so nothing moves), then eth0's
/// set-up and both directions.
pub fn script(size_mib: u64) -> String {
    format!(
        "{}ip addr add {GUEST_IP}/24 dev eth0\nip link set eth0 up\necho {}\n\
         zvm-vsock-tool tcp-bench send {HOST_IP}:{SEND_PORT} {size_mib}\necho {}\n\
         zvm-vsock-tool tcp-bench recv {HOST_IP}:{RECV_PORT} {size_mib}\necho {}\n{}",
        idle_script(),
        MARKERS[START],
        MARKERS[MID],
        MARKERS[END],
        closing_script()
    )
}

/// Accepts one connection, giving up when `stop` is set.
fn accept(listener: &TcpListener, stop: &AtomicBool) -> Option<TcpStream> {
    listener.set_nonblocking(true).ok()?;
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).ok()?;
                s.set_read_timeout(Some(Duration::from_secs(120))).ok()?;
                s.set_write_timeout(Some(Duration::from_secs(120))).ok()?;
                return Some(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(_) => return None,
        }
    }
    None
}

/// Reads a guest's stream to its end; returns the bytes.
pub(crate) fn read_stream(mut s: TcpStream) -> Option<usize> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(total),
            Ok(n) => total += n,
            Err(_) => return None,
        }
    }
}

/// Writes `bytes` to a guest, half-closes and waits for it to close; returns the bytes.
pub(crate) fn write_stream(mut s: TcpStream, bytes: usize) -> Option<usize> {
    let buf = vec![0xa5u8; 256 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = buf.len().min(left);
        s.write_all(&buf[..n]).ok()?;
        left -= n;
    }
    s.shutdown(std::net::Shutdown::Write).ok()?;
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    Some(bytes)
}

/// Host side of guest-to-host: reads to end of stream, then closes. Returns MiB/s.
fn sink(listener: TcpListener, stop: Arc<AtomicBool>) -> JoinHandle<Option<f64>> {
    std::thread::spawn(move || {
        let s = accept(&listener, &stop)?;
        let start = Instant::now();
        let total = read_stream(s)?;
        Some(total as f64 / MIB / start.elapsed().as_secs_f64().max(1e-9))
    })
}

/// Host side of host-to-guest: writes `bytes`, half-closes, waits for the guest to close.
fn source(listener: TcpListener, bytes: usize, stop: Arc<AtomicBool>) -> JoinHandle<Option<f64>> {
    std::thread::spawn(move || {
        let s = accept(&listener, &stop)?;
        let start = Instant::now();
        let bytes = write_stream(s, bytes)?;
        Some(bytes as f64 / MIB / start.elapsed().as_secs_f64().max(1e-9))
    })
}

/// One run.
#[derive(Debug, Clone)]
pub struct NetRun {
    /// Which VMM.
    pub vmm: Vmm,
    /// 1-based run.
    pub run: usize,
    /// Guest-measured MiB/s, guest to host.
    pub tx: Option<f64>,
    /// Guest-measured MiB/s, host to guest.
    pub rx: Option<f64>,
    /// Host-measured MiB/s, guest to host.
    pub host_tx: Option<f64>,
    /// Host-measured MiB/s, host to guest.
    pub host_rx: Option<f64>,
    /// VMM CPU ms per MiB, guest to host.
    pub cpu_tx: Option<f64>,
    /// VMM CPU ms per MiB, host to guest.
    pub cpu_rx: Option<f64>,
    /// KVM's vCPU exits per MiB, both ways.
    pub exits: Option<f64>,
    /// Interrupts KVM injected per MiB, both ways.
    pub irqs: Option<f64>,
    /// Every KVM counter, per MiB (both ways) and per second (I/O and idle).
    pub counters: CounterRates,
}

/// Reads one figure of a run.
type Column = fn(&NetRun) -> Option<f64>;

const COLUMNS: [(&str, Column); 8] = [
    ("guest->host MiB/s (guest)", |r| r.tx),
    ("host->guest MiB/s (guest)", |r| r.rx),
    ("guest->host MiB/s (host)", |r| r.host_tx),
    ("host->guest MiB/s (host)", |r| r.host_rx),
    ("host CPU ms/MiB, g->h", |r| r.cpu_tx),
    ("host CPU ms/MiB, h->g", |r| r.cpu_rx),
    ("KVM exits per MiB", |r| r.exits),
    ("KVM interrupts per MiB", |r| r.irqs),
];

/// Results of the network benchmark.
#[derive(Debug, Clone)]
pub struct NetReport {
    /// Every run.
    pub runs: Vec<NetRun>,
    /// Runs without both guest results.
    pub failures: usize,
    /// Every KVM counter, medians per VMM.
    pub breakdown: Breakdown,
}

impl NetReport {
    fn median(&self, vmm: Vmm, f: fn(&NetRun) -> Option<f64>) -> Option<f64> {
        median(
            &self
                .runs
                .iter()
                .filter(|r| r.vmm == vmm)
                .filter_map(f)
                .collect::<Vec<_>>(),
        )
    }

    /// As JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let keys = [
            "tx_guest_mib_s",
            "rx_guest_mib_s",
            "tx_host_mib_s",
            "rx_host_mib_s",
            "tx_host_cpu_ms_per_mib",
            "rx_host_cpu_ms_per_mib",
            "exits_per_mib",
            "irqs_per_mib",
        ];
        let obj = |f: &dyn Fn(Column) -> Option<f64>| {
            serde_json::Value::Object(
                keys.iter()
                    .zip(COLUMNS)
                    .map(|(k, (_, c))| ((*k).to_string(), serde_json::json!(f(c))))
                    .collect(),
            )
        };
        let runs: Vec<_> = self
            .runs
            .iter()
            .map(|r| {
                let mut o = obj(&|c| c(r));
                o["vmm"] = r.vmm.name().into();
                o["run"] = r.run.into();
                o
            })
            .collect();
        serde_json::json!({"runs": runs,
            "median": {"zvm": obj(&|c| self.median(Vmm::Zvm, c)), "qemu": obj(&|c| self.median(Vmm::Qemu, c))},
            "ratio_zvm_qemu": obj(&|c| ratio(self.median(Vmm::Zvm, c), self.median(Vmm::Qemu, c))),
            "kvm_counters": self.breakdown.to_json(), "failures": self.failures})
    }

    fn print_summary(&self) {
        println!();
        println!(
            "{:<30}  {:>10}  {:>10}  {:>9}  goal",
            "median", "zvm", "qemu", "zvm/qemu"
        );
        for (i, (name, c)) in COLUMNS.iter().enumerate() {
            let (a, b) = (self.median(Vmm::Zvm, *c), self.median(Vmm::Qemu, *c));
            let goal = match i {
                0..=3 => ">= 1.0",
                4 | 5 => "<= 1.0",
                _ => "<= 0.5",
            };
            println!(
                "{name:<30}  {:>10}  {:>10}  {:>9}  {goal}",
                fmt_opt(a, 2),
                fmt_opt(b, 2),
                fmt_opt(ratio(a, b), 3)
            );
        }
    }
}

fn per_mib(cpu: Option<f64>, mib: u64) -> Option<f64> {
    cpu.filter(|_| mib > 0).map(|c| c * 1000.0 / mib as f64)
}

/// Runs the network benchmark moving `size_mib` MiB each way.
pub fn run(
    launcher: &Launcher,
    cfg: &DeviceConfig,
    size_mib: u64,
    dir: &Path,
) -> Result<NetReport> {
    let guest = devices::prepare(cfg, &script(size_mib), dir, "net-initramfs.cpio")?;
    let ns = NetNs::create("net")?;
    println!("== Network throughput: {} run(s) each, {size_mib} MiB TCP each way (guest {GUEST_IP} <-> host {HOST_IP} on tap {} in netns {})", cfg.runs, ns.tap, ns.name);
    println!("   zvm --net tap=..; qemu virtio-net-device, -netdev tap vhost=off; MiB/s measured in the guest and by the host thread");
    println!(
        "{:>4}  {:<5}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>8}  end",
        "run",
        "vmm",
        "g->h",
        "h->g",
        "g->h host",
        "h->g host",
        "CPU g->h",
        "CPU h->g",
        "exits/MiB",
        "irqs/MiB"
    );
    let mut runs = Vec::new();
    let mut failures = 0;
    for i in 0..cfg.runs {
        for vmm in order(i) {
            let stop = Arc::new(AtomicBool::new(false));
            let tx_host = sink(ns.listen(format!("{HOST_IP}:{SEND_PORT}"))?, stop.clone());
            let rx_host = source(
                ns.listen(format!("{HOST_IP}:{RECV_PORT}"))?,
                (size_mib << 20) as usize,
                stop.clone(),
            );
            let dev = Devices {
                disk: None,
                net: true,
            };
            let probe = devices::kvm_probe(vmm, dir, i);
            let phase = PhaseRun::run(
                &mut devices::command(launcher, vmm, &guest, dev, &ns, &probe),
                &MARKERS,
                cfg.timeout,
                &probe,
            );
            stop.store(true, Ordering::Relaxed);
            let (host_tx, host_rx) = (tx_host.join().ok().flatten(), rx_host.join().ok().flatten());
            let phase = phase?;
            let guest_line = |dir: &str| {
                phase
                    .out
                    .lines
                    .iter()
                    .find_map(|(_, l)| l.find("NET ").and_then(|p| parse_net(&l[p..], dir)))
            };
            let r = NetRun {
                vmm,
                run: i + 1,
                tx: guest_line("send").map(|n| n.mib_s),
                rx: guest_line("recv").map(|n| n.mib_s),
                host_tx,
                host_rx,
                cpu_tx: per_mib(phase.cpu_between(START, MID), size_mib),
                cpu_rx: per_mib(phase.cpu_between(MID, END), size_mib),
                exits: per_mib(phase.kvm_between(START, END, "exits"), 2 * size_mib)
                    .map(|x| x / 1000.0),
                irqs: per_mib(
                    phase.kvm_between(START, END, "irq_injections"),
                    2 * size_mib,
                )
                .map(|x| x / 1000.0),
                counters: CounterRates::of(&phase, IDLE, (START, END), 2.0 * size_mib as f64),
            };
            if r.tx.is_none() || r.rx.is_none() {
                failures += 1;
                eprintln!(
                    "warning: {} run {} lacks a NET line; {}",
                    vmm.name(),
                    i + 1,
                    phase.out.tail(20)
                );
            }
            println!(
                "{:>4}  {:<5}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>8}  {:?}",
                r.run,
                vmm.name(),
                fmt_opt(r.tx, 2),
                fmt_opt(r.rx, 2),
                fmt_opt(r.host_tx, 2),
                fmt_opt(r.host_rx, 2),
                fmt_opt(r.cpu_tx, 2),
                fmt_opt(r.cpu_rx, 2),
                fmt_opt(r.exits, 1),
                fmt_opt(r.irqs, 1),
                phase.ending()
            );
            runs.push(r);
        }
    }
    drop(ns);
    let labelled: Vec<(&str, &CounterRates)> =
        runs.iter().map(|r| (r.vmm.name(), &r.counters)).collect();
    let names = [Vmm::Zvm.name(), Vmm::Qemu.name()];
    let breakdown = Breakdown::of(&labelled, &names);
    let report = NetReport {
        runs,
        failures,
        breakdown,
    };
    report.print_summary();
    report.breakdown.print(names[0], names[1]);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_guest_lines_by_direction() {
        let send = "NET dir=send bytes=33554432 secs=1.250 mib_s=25.60";
        assert_eq!(
            parse_net(send, "send"),
            Some(NetResult {
                bytes: 33554432.0,
                mib_s: 25.6
            })
        );
        assert_eq!(parse_net(send, "recv"), None);
        assert_eq!(parse_net("NET dir=recv bytes=1", "recv"), None);
        assert_eq!(parse_net("BLK dir=recv mib_s=1 bytes=1", "recv"), None);
    }

    #[test]
    fn script_configures_eth0_and_runs_both_directions() {
        let s = script(32);
        assert!(s.contains("ip addr add 10.0.2.15/24 dev eth0"));
        assert!(
            s.contains("tcp-bench send 10.0.2.1:7000 32")
                && s.contains("tcp-bench recv 10.0.2.1:7001 32")
        );
        assert!(s.starts_with(&format!("{}ip addr add", idle_script())));
        assert!(s.ends_with(&closing_script()));
    }
}
