//! zvm's side of API mode: the client (`zvm api`) and zvm's own log, which `PUT /logger`
//! reconfigures when zvm serves the API itself (`ZVM_VMM=none`). The monitor that serves
//! it is vm-runner's ([`vm_runner::api`]).

pub mod client;
pub mod logger;

use crate::handover::{ApiJob, Handover, Job};
use std::process::ExitCode;
use std::time::Instant;

/// API mode's jail (`--jail-root DIR` and its limits).
#[derive(Debug)]
pub struct ApiJail<'a> {
    /// `--jail-root`.
    pub dir: &'a std::path::Path,
    /// `--jail-ids`.
    pub ids: jail::IdRange,
    /// `--jail-memory-mib`.
    pub memory_mib: u64,
    /// `--jail-cpus`.
    pub cpus: u8,
}

/// Runs API mode: in its jail when asked (this process then supervises it), handed to
/// zvm-vmm when it can be (crate::vmm_exec), else served here.
pub fn run(
    job: ApiJob,
    jail: Option<ApiJail<'_>>,
    logging: logger::Logging,
    process_start: Instant,
) -> ExitCode {
    if let Some(jail) = jail {
        match crate::vm_jail::enter_api(jail.dir, jail.ids, jail.memory_mib, jail.cpus) {
            Ok(crate::vm_jail::Entered::Supervisor(status)) => {
                return ExitCode::from(u8::try_from(status).unwrap_or(255))
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("zvm: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let handover = Handover {
        job: Job::Api(job.clone()),
        metrics: None,
        shutdown_timeout_secs: 0,
        log_level: logging.level().to_string(),
        started_ns_ago: 0,
        jail: None,
    };
    if let Some(e) = crate::vmm_exec::exec(&handover, process_start) {
        tracing::warn!("{e}; zvm serves the API");
    }
    if let Err(e) = crate::vm_jail::lock_down_api() {
        eprintln!("zvm: {e}");
        return ExitCode::from(2);
    }
    vm_runner::api::serve(job.mode_args(Box::new(logging)), process_start)
}
