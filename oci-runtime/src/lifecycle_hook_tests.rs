//! The lifecycle's hooks: their order, the state on their stdin, and what a failing one
//! does at each point.

use super::*;

#[test]
fn hooks_run_in_spec_order_with_the_state_on_stdin() {
    let e = env_all_hooks(None);
    let pid_file = e.bundle.join("pid");
    let req = CreateRequest {
        pid_file: Some(pid_file.clone()),
        ..e.req()
    };
    e.rt.create("h", &req).unwrap();
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap(),
        std::process::id().to_string()
    );
    e.rt.start("h").unwrap();
    e.fake.set(BackendStatus::Stopped(Some(0)));
    e.rt.delete("h", false).unwrap();
    assert_eq!(
        e.log(),
        vec![
            "backend create",
            "hook prestart created",
            "hook createRuntime created",
            "hook createContainer created",
            "hook startContainer created",
            "backend start",
            "hook poststart running",
            "backend delete",
            "hook poststop stopped",
        ]
    );
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(e.bundle.join("createRuntime.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["id"], "h");
    assert_eq!(state["ociVersion"], OCI_VERSION);
    assert_eq!(state["pid"], std::process::id());
    assert_eq!(
        state["bundle"],
        std::fs::canonicalize(&e.bundle)
            .unwrap()
            .display()
            .to_string()
    );
    assert_eq!(state["annotations"]["org.example.k"], "v");
    let stopped: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(e.bundle.join("poststop.json")).unwrap())
            .unwrap();
    assert!(
        stopped.get("pid").is_none(),
        "a stopped state has no pid: {stopped}"
    );
}

#[test]
fn a_failing_create_hook_destroys_the_container() {
    let e = env_all_hooks(Some("createRuntime"));
    let err = e.rt.create("h", &e.req()).unwrap_err();
    assert!(
        matches!(err, LifecycleError::Hook(HookError::Failed { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("createRuntime hook"), "{err}");
    assert!(matches!(
        e.rt.state("h"),
        Err(LifecycleError::State(StateError::NotFound(_)))
    ));
    assert_eq!(
        e.log(),
        vec![
            "backend create",
            "hook prestart created",
            "hook createRuntime created",
            "backend kill 9 true",
            "backend delete",
            "hook poststop stopped",
        ]
    );
}

#[test]
fn a_failing_start_hook_stops_the_container_and_fails_start() {
    let e = env_all_hooks(Some("startContainer"));
    e.rt.create("h", &e.req()).unwrap();
    let err = e.rt.start("h").unwrap_err();
    assert!(err.to_string().contains("startContainer hook"), "{err}");
    assert_eq!(e.rt.state("h").unwrap().status, ContainerState::Stopped);
    assert!(!e.log().contains(&"backend start".to_string()));
    e.rt.delete("h", false).unwrap();
}

#[test]
fn a_failing_poststart_hook_only_warns() {
    let e = env_all_hooks(Some("poststart"));
    e.rt.create("h", &e.req()).unwrap();
    e.rt.start("h").unwrap();
    assert_eq!(e.rt.state("h").unwrap().status, ContainerState::Running);
    e.rt.delete("h", true).unwrap();
}
