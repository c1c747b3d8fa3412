//! A step an embedder runs once every host resource of the VM is open and before the
//! guest's kernel is read or any of the VM's threads starts: where a jail takes the
//! process's privileges away (credentials are per thread, so no thread may exist yet).

use super::BuildError;
use std::sync::Mutex;

/// The embedder's step, run once by the first VM built or restored after it is set.
type Step = Box<dyn FnOnce() -> Result<(), String> + Send>;

static LOCK_DOWN: Mutex<Option<Step>> = Mutex::new(None);

/// Sets the step the next VM built or restored by this process runs before its kernel is
/// loaded (a boot) or its threads start (a restore).
pub fn set_lock_down(step: impl FnOnce() -> Result<(), String> + Send + 'static) {
    *LOCK_DOWN.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(step));
}

/// Runs the step, if one is set and has not run.
pub(crate) fn run_lock_down() -> Result<(), BuildError> {
    run_step(&LOCK_DOWN)
}

fn run_step(slot: &Mutex<Option<Step>>) -> Result<(), BuildError> {
    let step = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    match step {
        Some(step) => step().map_err(BuildError::LockDown),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_step_runs_once_and_its_error_ends_the_build() {
        // A slot of the test's own: the process-wide one would reach VMs other tests build.
        let slot: Mutex<Option<Step>> = Mutex::new(Some(Box::new(|| Err("no jail here".into()))));
        let err = run_step(&slot).expect_err("the step's error");
        assert!(err.to_string().contains("no jail here"), "{err}");
        assert!(run_step(&slot).is_ok(), "ran twice");
    }
}
