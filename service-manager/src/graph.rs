//! The `after` graph: every dependency must exist, there must be no cycle, and services
//! start in an order where each one comes after everything it waits for.

use crate::config::{ConfigError, Service};
use std::collections::BTreeMap;

/// Checks the graph and returns the service names in a start order (dependencies first;
/// among services that are ready at the same time, by name). Shutdown uses the reverse.
pub fn start_order(services: &[Service]) -> Result<Vec<String>, ConfigError> {
    let by_name: BTreeMap<&str, &Service> = services.iter().map(|s| (s.name.as_str(), s)).collect();
    for s in services {
        for dep in &s.after {
            if !by_name.contains_key(dep.as_str()) {
                return Err(ConfigError::MissingDependency {
                    service: s.name.clone(),
                    missing: dep.clone(),
                });
            }
        }
    }
    if let Some(cycle) = find_cycle(&by_name) {
        return Err(ConfigError::Cycle(cycle));
    }
    // Kahn's algorithm with a sorted ready set, so the order is deterministic.
    let mut waiting: BTreeMap<&str, usize> =
        by_name.iter().map(|(n, s)| (*n, s.after.len())).collect();
    let mut order = Vec::with_capacity(services.len());
    while !waiting.is_empty() {
        let Some(next) = waiting
            .iter()
            .find(|(_, n)| **n == 0)
            .map(|(name, _)| *name)
        else {
            // Unreachable after find_cycle, but never loop forever.
            return Err(ConfigError::Cycle(
                waiting.keys().map(|s| s.to_string()).collect(),
            ));
        };
        waiting.remove(next);
        for (name, count) in waiting.iter_mut() {
            let deps = &by_name[name].after;
            *count -= deps.iter().filter(|d| d.as_str() == next).count();
        }
        order.push(next.to_string());
    }
    Ok(order)
}

/// Depth-first search for a cycle; returns it as a path that starts and ends on the same
/// service.
fn find_cycle(by_name: &BTreeMap<&str, &Service>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnStack,
        Done,
    }
    let mut marks: BTreeMap<&str, Mark> = by_name.keys().map(|n| (*n, Mark::New)).collect();
    for root in by_name.keys() {
        if marks[root] != Mark::New {
            continue;
        }
        // Iterative DFS: (node, index of the next dependency to visit).
        let mut stack: Vec<(&str, usize)> = vec![(root, 0)];
        marks.insert(root, Mark::OnStack);
        while let Some((node, next)) = stack.last().copied() {
            let deps = &by_name[node].after;
            if next == deps.len() {
                marks.insert(node, Mark::Done);
                stack.pop();
                continue;
            }
            if let Some(top) = stack.last_mut() {
                top.1 += 1;
            }
            let dep = deps[next].as_str();
            match marks.get(dep).copied() {
                Some(Mark::New) => {
                    marks.insert(dep, Mark::OnStack);
                    stack.push((dep, 0));
                }
                Some(Mark::OnStack) => {
                    let start = stack.iter().position(|(n, _)| *n == dep).unwrap_or(0);
                    let mut cycle: Vec<String> =
                        stack[start..].iter().map(|(n, _)| n.to_string()).collect();
                    cycle.push(dep.to_string());
                    return Some(cycle);
                }
                _ => {}
            }
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::parse_service;

    fn svc(name: &str, after: &[&str]) -> Service {
        let text = format!("exec: /bin/{name}\nafter: [{}]\n", after.join(", "));
        parse_service(name, &text).unwrap()
    }

    #[test]
    fn dependencies_come_first() {
        let services = vec![
            svc("report", &["node"]),
            svc("node", &["storage", "net"]),
            svc("storage", &[]),
            svc("net", &[]),
            svc("zz", &[]),
        ];
        let order = start_order(&services).unwrap();
        let pos = |n: &str| order.iter().position(|o| o == n).unwrap();
        assert!(
            pos("storage") < pos("node") && pos("net") < pos("node") && pos("node") < pos("report")
        );
        assert_eq!(order, ["net", "storage", "node", "report", "zz"]);
    }

    #[test]
    fn missing_dependency_is_named() {
        let e = start_order(&[svc("node", &["storage"])]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "service node: `after` names storage, which is not defined"
        );
    }

    #[test]
    fn cycles_are_reported_with_their_path() {
        let services = vec![
            svc("a", &["b"]),
            svc("b", &["c"]),
            svc("c", &["a"]),
            svc("d", &[]),
        ];
        let e = start_order(&services).unwrap_err();
        assert_eq!(e.to_string(), "dependency cycle: a -> b -> c -> a");
        let e = start_order(&[svc("x", &["y"]), svc("y", &["x"])]).unwrap_err();
        assert_eq!(e.to_string(), "dependency cycle: x -> y -> x");
    }

    #[test]
    fn diamond_and_duplicates() {
        let services = vec![
            svc("top", &["l", "r", "l"]),
            svc("l", &["base"]),
            svc("r", &["base"]),
            svc("base", &[]),
        ];
        assert_eq!(start_order(&services).unwrap(), ["base", "l", "r", "top"]);
        assert!(start_order(&[]).unwrap().is_empty());
    }
}
