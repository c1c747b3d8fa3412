//! The guest's own count of the interrupts it took (`/proc/interrupts`), dumped on the
//! console before the idle window, after it and after the I/O: which sources (the local
//! APIC timer, each virtio device, IPIs) the injections KVM counts went to. The guest's
//! console is not to be trusted more than any other output: lines that do not parse are
//! skipped, and counts are bounded by their type.

use std::collections::BTreeMap;
use std::time::Duration;

/// The guest command that dumps the counts.
pub const DUMP: &str = "cat /proc/interrupts";
/// Longest source name kept (the table's column).
const MAX_NAME: usize = 34;

/// Counts per interrupt source.
pub type IrqCounts = BTreeMap<String, u64>;

/// One `/proc/interrupts` line: the source's name (`irq LOC`, `irq 5 IO-APIC 5-edge
/// virtio0`) and its count summed over the CPU columns.
pub fn parse_line(line: &str) -> Option<(String, u64)> {
    let mut tokens = line.split_whitespace();
    let label = tokens.next()?.strip_suffix(':')?;
    if label.is_empty() || !label.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    let rest: Vec<&str> = tokens.collect();
    let counts = rest.iter().take_while(|t| t.parse::<u64>().is_ok()).count();
    if counts == 0 {
        return None;
    }
    let total = rest[..counts]
        .iter()
        .filter_map(|t| t.parse::<u64>().ok())
        .fold(0u64, u64::saturating_add);
    let mut name = if label.chars().all(|c| c.is_ascii_digit()) {
        format!("irq {label} {}", rest[counts..].join(" "))
    } else {
        format!("irq {label}")
    };
    name.truncate(MAX_NAME);
    Some((name.trim_end().to_string(), total))
}

/// The counts dumped between the console line containing `after` (the start, if `None`)
/// and the next line containing `before`.
pub fn dump_between(
    lines: &[(Duration, String)],
    after: Option<&str>,
    before: &str,
) -> Option<IrqCounts> {
    let from = match after {
        Some(m) => lines.iter().position(|(_, l)| l.contains(m))? + 1,
        None => 0,
    };
    let len = lines
        .get(from..)?
        .iter()
        .position(|(_, l)| l.contains(before))?;
    let counts: IrqCounts = lines[from..from + len]
        .iter()
        .filter_map(|(_, l)| parse_line(l))
        .collect();
    (!counts.is_empty()).then_some(counts)
}

/// How much each source both dumps have grew.
pub fn growth(a: &IrqCounts, b: &IrqCounts) -> BTreeMap<String, f64> {
    b.iter()
        .filter_map(|(n, after)| Some((n.clone(), after.saturating_sub(*a.get(n)?) as f64)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<(Duration, String)> {
        text.lines()
            .map(|l| (Duration::ZERO, l.to_string()))
            .collect()
    }

    #[test]
    fn parses_numbered_and_named_sources() {
        assert_eq!(
            parse_line("  5:       1234   IO-APIC   5-edge      virtio0"),
            Some(("irq 5 IO-APIC 5-edge virtio0".to_string(), 1234))
        );
        assert_eq!(
            parse_line(" LOC:        10         32   Local timer interrupts"),
            Some(("irq LOC".to_string(), 42))
        );
        assert_eq!(parse_line("            CPU0"), None);
        assert_eq!(parse_line("[    0.5] virtio: 12 queues"), None);
        assert_eq!(
            parse_line("ERR:          0"),
            Some(("irq ERR".to_string(), 0))
        );
        assert_eq!(parse_line("zvm-init: started"), None);
        let long = format!(" 12:  1  IO-APIC  12-edge  {}", "x".repeat(80));
        assert!(parse_line(&long).is_some_and(|(n, _)| n.len() <= MAX_NAME));
    }

    #[test]
    fn dumps_are_found_between_markers_and_subtracted() {
        let console = lines(
            "[ 1.0] boot\n LOC: 5 Local\n  5: 1 IO-APIC 5-edge virtio0\nIDLE-START\n\
             IDLE-END\n LOC: 25 Local\n  5: 1 IO-APIC 5-edge virtio0\nBENCH-START\nBLK x=1\n\
             BENCH-END\n LOC: 125 Local\n  5: 301 IO-APIC 5-edge virtio0\nIRQS-END",
        );
        let d0 = dump_between(&console, None, "IDLE-START").expect("d0");
        let d1 = dump_between(&console, Some("IDLE-END"), "BENCH-START").expect("d1");
        let d2 = dump_between(&console, Some("BENCH-END"), "IRQS-END").expect("d2");
        assert_eq!(growth(&d0, &d1).get("irq LOC"), Some(&20.0));
        let io = growth(&d1, &d2);
        assert_eq!(io.get("irq 5 IO-APIC 5-edge virtio0"), Some(&300.0));
        assert_eq!(
            dump_between(&console, Some("BENCH-START"), "BENCH-END"),
            None
        );
        assert_eq!(dump_between(&console, Some("NOWHERE"), "IRQS-END"), None);
    }
}
