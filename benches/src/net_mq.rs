//! Network multiqueue: the `net` benchmark with several vCPUs, TCP streams and queue pairs.
//!
//! `zvm-bench net --queue-pairs 1,2 --cpus 2 --streams 2` runs, in one run, each VMM with
//! every listed number of queue pairs (zvm `--net tap=..,queues=N`; QEMU `-netdev
//! tap,queues=N` and `virtio-net-device,mq=on`), on the same guest: `--streams` TCP streams
//! each way at once, stream k pinned to vCPU k mod cpus (so with one stream per vCPU every
//! transmit queue is used). A pair count above 1 gets a multiqueue tap (`ip tuntap ...
//! multi_queue`) in a namespace of its own. Figures: throughput (all streams, measured by
//! the host from the first connection to the last byte; and the sum of the guest's
//! per-stream figures), the VMM's host CPU per MiB each way, KVM exits and interrupts per MiB.

use crate::devices::{self, DeviceConfig, PhaseRun};
use crate::error::Result;
use crate::kvm_stats::KvmProbe;
use crate::measure::{fmt_opt, median, ratio};
use crate::net::{self, parse_net};
use crate::netns::{NetNs, GUEST_IP, GUEST_MAC, HOST_IP};
use crate::vmms::{order, qemu_args, zvm_args, GuestSpec, Launcher, Vmm};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const MARKERS: [&str; 3] = ["MQ-START", "MQ-MID", "MQ-END"];
const SEND_PORT: u16 = 7000;
const RECV_PORT: u16 = 7001;
const MIB: f64 = (1u64 << 20) as f64;

/// What the multiqueue runs vary.
#[derive(Debug, Clone)]
pub struct MqConfig {
    /// Queue pairs to compare (each run boots each VMM once per entry).
    pub pairs: Vec<u16>,
    /// Guest vCPUs.
    pub cpus: u32,
    /// TCP streams each way.
    pub streams: usize,
}

/// The guest script: `streams` pinned senders, then as many receivers, `size_mib` in all
/// each way.
pub fn script(size_mib: u64, cpus: u32, streams: usize) -> String {
    let each = (size_mib / streams as u64).max(1);
    let wave = |dir: &str, port: u16| {
        (0..streams)
            .map(|k| {
                let mask = 1u64 << (k as u32 % cpus.max(1));
                format!(
                    "taskset {mask:x} zvm-vsock-tool tcp-bench {dir} {HOST_IP}:{port} {each} &\n"
                )
            })
            .collect::<String>()
    };
    format!(
        "ip addr add {GUEST_IP}/24 dev eth0\nip link set eth0 up\n\
         echo \"queues: $(ls /sys/class/net/eth0/queues | tr '\\n' ' ')\"\necho {}\n{}wait\necho {}\n{}wait\necho {}\n",
        MARKERS[0],
        wave("send", SEND_PORT),
        MARKERS[1],
        wave("recv", RECV_PORT),
        MARKERS[2]
    )
}

/// Accepts `n` connections (giving up when `stop` is set) and runs `serve` on each in a
/// thread of its own; returns the MiB/s of all together, from the first connection to the
/// last one's end, if every one served `bytes` in all.
fn serve_all(
    listener: TcpListener,
    n: usize,
    stop: Arc<AtomicBool>,
    serve: fn(TcpStream, usize) -> Option<usize>,
    bytes: usize,
) -> JoinHandle<Option<f64>> {
    std::thread::spawn(move || {
        listener.set_nonblocking(true).ok()?;
        let mut start = None;
        let mut conns = Vec::new();
        while conns.len() < n && !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((s, _)) => {
                    start.get_or_insert_with(Instant::now);
                    s.set_nonblocking(false).ok()?;
                    s.set_read_timeout(Some(Duration::from_secs(120))).ok()?;
                    s.set_write_timeout(Some(Duration::from_secs(120))).ok()?;
                    conns.push(std::thread::spawn(move || serve(s, bytes)));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(_) => return None,
            }
        }
        let mut total = 0;
        for c in conns {
            total += c.join().ok().flatten()?;
        }
        let secs = start?.elapsed().as_secs_f64().max(1e-9);
        Some(total as f64 / MIB / secs)
    })
}

/// One run of one VMM with one number of queue pairs.
#[derive(Debug, Clone, Copy)]
pub struct MqRun {
    /// Which VMM.
    pub vmm: Vmm,
    /// Queue pairs.
    pub pairs: u16,
    /// 1-based run.
    pub run: usize,
    /// Figures, in [`COLUMNS`] order.
    pub figures: [Option<f64>; 8],
}

const COLUMNS: [(&str, &str); 8] = [
    ("g->h MiB/s (host)", "tx_host_mib_s"),
    ("h->g MiB/s (host)", "rx_host_mib_s"),
    ("g->h MiB/s (guest sum)", "tx_guest_mib_s"),
    ("h->g MiB/s (guest sum)", "rx_guest_mib_s"),
    ("host CPU ms/MiB, g->h", "tx_host_cpu_ms_per_mib"),
    ("host CPU ms/MiB, h->g", "rx_host_cpu_ms_per_mib"),
    ("KVM exits per MiB", "exits_per_mib"),
    ("KVM interrupts per MiB", "irqs_per_mib"),
];

/// Results of the multiqueue runs.
#[derive(Debug, Clone)]
pub struct MqReport {
    /// The configuration compared.
    pub config: MqConfig,
    /// Every run.
    pub runs: Vec<MqRun>,
    /// Runs that did not finish both directions.
    pub failures: usize,
}

impl MqReport {
    fn median(&self, vmm: Vmm, pairs: u16, column: usize) -> Option<f64> {
        let values: Vec<f64> = self
            .runs
            .iter()
            .filter(|r| r.vmm == vmm && r.pairs == pairs)
            .filter_map(|r| r.figures[column])
            .collect();
        median(&values)
    }

    /// As JSON: runs, medians per VMM and pair count, and the ratios.
    pub fn to_json(&self) -> serde_json::Value {
        let medians = |vmm: Vmm, pairs: u16| {
            serde_json::Value::Object(
                COLUMNS
                    .iter()
                    .enumerate()
                    .map(|(i, (_, key))| ((*key).into(), self.median(vmm, pairs, i).into()))
                    .collect(),
            )
        };
        let runs: Vec<_> = self
            .runs
            .iter()
            .map(|r| {
                let mut o: serde_json::Map<String, serde_json::Value> = COLUMNS
                    .iter()
                    .zip(r.figures)
                    .map(|((_, key), v)| ((*key).into(), v.into()))
                    .collect();
                o.insert("vmm".into(), r.vmm.name().into());
                o.insert("queue_pairs".into(), r.pairs.into());
                o.insert("run".into(), r.run.into());
                serde_json::Value::Object(o)
            })
            .collect();
        let mut median = serde_json::Map::new();
        for vmm in [Vmm::Zvm, Vmm::Qemu] {
            for &p in &self.config.pairs {
                median.insert(format!("{}_{p}", vmm.name()), medians(vmm, p));
            }
        }
        serde_json::json!({"cpus": self.config.cpus, "streams": self.config.streams,
            "runs": runs, "median": median, "failures": self.failures})
    }

    fn print_summary(&self) {
        let configs: Vec<(Vmm, u16)> = [Vmm::Zvm, Vmm::Qemu]
            .iter()
            .flat_map(|&v| self.config.pairs.iter().map(move |&p| (v, p)))
            .collect();
        let base = self.config.pairs.first().copied().unwrap_or(1);
        println!();
        print!("{:<24}", "median");
        for (v, p) in &configs {
            print!("  {:>9}", format!("{} {p}q", v.name()));
        }
        for &p in self.config.pairs.iter().skip(1) {
            print!(
                "  {:>9}  {:>9}",
                format!("zvm {p}/{base}"),
                format!("qemu {p}/{base}")
            );
        }
        for &p in &self.config.pairs {
            print!("  {:>9}", format!("zvm/q {p}q"));
        }
        println!();
        for (i, (name, _)) in COLUMNS.iter().enumerate() {
            print!("{name:<24}");
            for &(v, p) in &configs {
                print!("  {:>9}", fmt_opt(self.median(v, p, i), 2));
            }
            for &p in self.config.pairs.iter().skip(1) {
                for v in [Vmm::Zvm, Vmm::Qemu] {
                    let r = ratio(self.median(v, p, i), self.median(v, base, i));
                    print!("  {:>9}", fmt_opt(r, 3));
                }
            }
            for &p in &self.config.pairs {
                let r = ratio(self.median(Vmm::Zvm, p, i), self.median(Vmm::Qemu, p, i));
                print!("  {:>9}", fmt_opt(r, 3));
            }
            println!();
        }
    }
}

/// The VMM's network arguments for a NIC with `pairs` queue pairs on `tap`.
pub fn nic_args(vmm: Vmm, tap: &str, pairs: u16) -> Vec<String> {
    match vmm {
        Vmm::Zvm => vec![
            "--net".into(),
            format!("tap={tap},mac={GUEST_MAC},queues={pairs}"),
        ],
        Vmm::Qemu => {
            let (queues, mq) = match pairs {
                1 => (String::new(), ""),
                n => (format!(",queues={n}"), ",mq=on"),
            };
            vec![
                "-netdev".into(),
                format!("tap,id=n0,ifname={tap},script=no,downscript=no,vhost=off{queues}"),
                "-device".into(),
                format!("virtio-net-device,netdev=n0,mac={GUEST_MAC}{mq}"),
            ]
        }
    }
}

fn command(
    launcher: &Launcher,
    vmm: Vmm,
    guest: &GuestSpec,
    ns: &NetNs,
    pairs: u16,
    probe: &KvmProbe,
) -> Command {
    let (program, mut args) = match vmm {
        Vmm::Zvm => (&launcher.zvm, zvm_args(guest)),
        Vmm::Qemu => {
            let mut a = qemu_args(guest, launcher.pvm);
            // Without ACPI, QEMU names its virtio-mmio devices on the command line (as `net` does).
            if let Some(m) = a.iter().position(|x| x == "microvm") {
                a[m] = "microvm,acpi=off".into();
            }
            (&launcher.qemu, a)
        }
    };
    args.extend(nic_args(vmm, &ns.tap, pairs));
    args.extend(probe.vmm_args());
    let mut cmd = ns.command(program);
    cmd.args(args);
    cmd
}

fn per_mib(value: Option<f64>, mib: u64, scale: f64) -> Option<f64> {
    value.filter(|_| mib > 0).map(|v| v * scale / mib as f64)
}

/// Runs the multiqueue comparison, moving `size_mib` MiB each way per boot.
pub fn run(
    launcher: &Launcher,
    cfg: &DeviceConfig,
    mq: &MqConfig,
    size_mib: u64,
    dir: &Path,
) -> Result<MqReport> {
    let streams = mq.streams.max(1);
    let mut guest = devices::prepare(
        cfg,
        &script(size_mib, mq.cpus, streams),
        dir,
        "net-mq-initramfs.cpio",
    )?;
    guest.cpus = mq.cpus.max(1);
    let each = (size_mib / streams as u64).max(1);
    let moved = each * streams as u64;
    let mut namespaces = Vec::new();
    for &p in &mq.pairs {
        namespaces.push((p, NetNs::create_queues(&format!("mq{p}"), p > 1)?));
    }
    println!("== Network multiqueue: {} run(s), {} vCPU(s), {streams} stream(s) of {each} MiB each way, queue pairs {:?}", cfg.runs, guest.cpus, mq.pairs);
    println!("   zvm --net tap=..,queues=N; qemu -netdev tap,queues=N,vhost=off -device virtio-net-device,mq=on");
    println!(
        "{:>4}  {:<5}  {:>5}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>8}  end",
        "run",
        "vmm",
        "pairs",
        "g->h host",
        "h->g host",
        "g->h gst",
        "h->g gst",
        "CPU g->h",
        "CPU h->g",
        "exits/MiB",
        "irqs/MiB"
    );
    let mut runs = Vec::new();
    let mut failures = 0;
    for i in 0..cfg.runs {
        for vmm in order(i) {
            for (pairs, ns) in &namespaces {
                let stop = Arc::new(AtomicBool::new(false));
                let bytes = (each << 20) as usize;
                let tx_host = serve_all(
                    ns.listen(format!("{HOST_IP}:{SEND_PORT}"))?,
                    streams,
                    stop.clone(),
                    |s, _| net::read_stream(s),
                    bytes,
                );
                let rx_host = serve_all(
                    ns.listen(format!("{HOST_IP}:{RECV_PORT}"))?,
                    streams,
                    stop.clone(),
                    net::write_stream,
                    bytes,
                );
                let probe = devices::kvm_probe(vmm, dir, i);
                let phase = PhaseRun::run(
                    &mut command(launcher, vmm, &guest, ns, *pairs, &probe),
                    &MARKERS,
                    cfg.timeout,
                    &probe,
                );
                stop.store(true, Ordering::Relaxed);
                let (host_tx, host_rx) =
                    (tx_host.join().ok().flatten(), rx_host.join().ok().flatten());
                let phase = phase?;
                let guest_sum = |dir: &str| {
                    let rates: Vec<f64> = phase
                        .out
                        .lines
                        .iter()
                        .filter_map(|(_, l)| l.find("NET ").and_then(|p| parse_net(&l[p..], dir)))
                        .map(|n| n.mib_s)
                        .collect();
                    (rates.len() == streams).then(|| rates.iter().sum())
                };
                let figures = [
                    host_tx,
                    host_rx,
                    guest_sum("send"),
                    guest_sum("recv"),
                    per_mib(phase.cpu_between(0, 1), moved, 1000.0),
                    per_mib(phase.cpu_between(1, 2), moved, 1000.0),
                    per_mib(phase.kvm_between(0, 2, "exits"), 2 * moved, 1.0),
                    per_mib(phase.kvm_between(0, 2, "irq_injections"), 2 * moved, 1.0),
                ];
                if figures[0].is_none() || figures[1].is_none() {
                    failures += 1;
                    eprintln!(
                        "warning: {} with {pairs} pair(s), run {}, did not finish; {}",
                        vmm.name(),
                        i + 1,
                        phase.out.tail(20)
                    );
                }
                let queues = phase.line("queues:").unwrap_or("queues: ?");
                print!("{:>4}  {:<5}  {:>5}", i + 1, vmm.name(), pairs);
                for (k, f) in figures.iter().enumerate() {
                    print!("  {:>9}", fmt_opt(*f, if k < 6 { 2 } else { 1 }));
                }
                println!("  {:?} ({queues})", phase.ending());
                runs.push(MqRun {
                    vmm,
                    pairs: *pairs,
                    run: i + 1,
                    figures,
                });
            }
        }
    }
    drop(namespaces);
    let report = MqReport {
        config: mq.clone(),
        runs,
        failures,
    };
    report.print_summary();
    Ok(report)
}

/// Parses `--queue-pairs`: a comma-separated list of counts from 1 to 8.
pub fn parse_pairs(text: &str) -> std::result::Result<Vec<u16>, String> {
    let pairs: Vec<u16> = text
        .split(',')
        .map(|p| p.trim().parse::<u16>().ok().filter(|n| (1..=8).contains(n)))
        .collect::<Option<_>>()
        .ok_or_else(|| format!("invalid queue pairs '{text}': use counts from 1 to 8, e.g. 1,2"))?;
    if pairs.is_empty() {
        return Err("no queue pairs given".into());
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_pins_one_stream_per_vcpu_each_way() {
        let s = script(32, 2, 2);
        assert!(s.contains("taskset 1 zvm-vsock-tool tcp-bench send 10.0.2.1:7000 16 &\n"));
        assert!(s.contains("taskset 2 zvm-vsock-tool tcp-bench send 10.0.2.1:7000 16 &\n"));
        assert!(s.contains("taskset 2 zvm-vsock-tool tcp-bench recv 10.0.2.1:7001 16 &\n"));
        assert_eq!(s.matches("wait\n").count(), 2);
        let one = script(32, 1, 1);
        assert!(one.contains("taskset 1 zvm-vsock-tool tcp-bench send 10.0.2.1:7000 32 &\n"));
    }

    #[test]
    fn nic_arguments_name_the_queue_pairs() {
        assert_eq!(
            nic_args(Vmm::Zvm, "t", 2)[1],
            format!("tap=t,mac={GUEST_MAC},queues=2")
        );
        let q = nic_args(Vmm::Qemu, "t", 2);
        assert_eq!(
            q[1],
            "tap,id=n0,ifname=t,script=no,downscript=no,vhost=off,queues=2"
        );
        assert_eq!(
            q[3],
            format!("virtio-net-device,netdev=n0,mac={GUEST_MAC},mq=on")
        );
        let q = nic_args(Vmm::Qemu, "t", 1);
        assert!(!q[1].contains("queues") && !q[3].contains("mq"));
    }

    #[test]
    fn queue_pair_lists_parse() {
        assert_eq!(parse_pairs("1,2"), Ok(vec![1, 2]));
        assert_eq!(parse_pairs("4"), Ok(vec![4]));
        for bad in ["", "0", "1,x", "9", "1,,2"] {
            assert!(parse_pairs(bad).is_err(), "{bad}");
        }
    }
}
