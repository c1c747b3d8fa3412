//! A container's set-up requests sent back to back: `Refresh`, `Network` (a clone with
//! interfaces) and `Create` go out together and their answers are read after, so the
//! guest agent finds the next request waiting when it has answered one (it handles them in
//! the order they came). Each exchange costs a wake-up of the guest and one of the host;
//! on hosts where the guest's kernel work is slow that is tens of milliseconds a request.

use super::{network_request, refresh_request, AgentConn, AgentError, SentRequest};
use agent_protocol::network::NetInterface;
use agent_protocol::{RequestBody, ResponseBody};
use std::time::Duration;

/// How long the agent has to acknowledge the `Shutdown` sent after a failed set-up.
const SHUTDOWN_AFTER_FAILURE: Duration = Duration::from_secs(10);

/// Whether the answers still on the way are worth waiting for after `failure`: an agent
/// that refused a request answers the next ones; one that is silent or gone does not.
fn later_answers_come(failure: &AgentError) -> bool {
    matches!(
        failure,
        AgentError::Refused { .. } | AgentError::Unexpected { .. }
    )
}

impl AgentConn {
    /// Sends `Refresh` (`hostname`), `Network` (when `network` is not empty) and `create`
    /// (a `Create` request, see [`super::create_request`]) without waiting in between,
    /// then reads their answers in order, each within `timeout`; returns the container's
    /// init pid. The first failure is the error, naming its request (a refused Refresh is
    /// reported as such, not as whatever Create answered after it); nothing is sent when a
    /// request cannot be prepared. After a refusal, once the agent answered what it was
    /// sent, it is asked to power the VM off; after a
    /// timeout or a lost connection nothing more is waited for.
    pub(crate) fn refresh_and_create(
        &self,
        hostname: Option<&str>,
        network: &[NetInterface],
        create: RequestBody,
        timeout: Duration,
    ) -> Result<i32, AgentError> {
        let mut bodies = vec![refresh_request(hostname)?];
        if !network.is_empty() {
            bodies.push(network_request(network)?);
        }
        bodies.push(create);
        let mut failure: Option<AgentError> = None;
        let mut sent: Vec<SentRequest> = Vec::with_capacity(bodies.len());
        for body in bodies {
            match self.send(body) {
                Ok(s) => sent.push(s),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let mut pid = None;
        for request in sent {
            if failure.as_ref().is_some_and(|f| !later_answers_come(f)) {
                self.forget(request.id);
                continue;
            }
            let name = request.name;
            let outcome = match (self.answer(request, timeout), name) {
                (Ok(ResponseBody::Created { pid: p }), "Create") => {
                    pid = Some(p);
                    Ok(())
                }
                (Ok(ResponseBody::Done), "Refresh" | "Network") => Ok(()),
                (Ok(answer), request) => Err(AgentError::Unexpected { request, answer }),
                (Err(e), _) => Err(e),
            };
            if let Err(e) = outcome {
                failure.get_or_insert(e);
            }
        }
        let failure = match (failure, pid) {
            (None, Some(pid)) => return Ok(pid),
            (Some(failure), _) => failure,
            (None, None) => AgentError::Lost("the agent never answered Create".into()),
        };
        // An agent that answers powers the VM off; the caller stops one that does not.
        if later_answers_come(&failure) {
            let _ = self.request_done(RequestBody::Shutdown, SHUTDOWN_AFTER_FAILURE);
        }
        Err(failure)
    }
}
