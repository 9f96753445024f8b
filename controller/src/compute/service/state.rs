//! States: hostd's instance states as Nova's (vm_state, power_state), and
//! what each server action asks of hostd, from which states, under which
//! task. Pure tables, no I/O.

use serde_json::{json, Value as Json};

/// The task_state of a server whose delete is recorded.
pub const DELETING: &str = "deleting";

/// Nova's power_state for a suspended server.
pub const POWER_SUSPENDED: i64 = 7;

/// hostd's instance state as (vm_state, power_state).
pub fn from_hostd(state: &str) -> (&'static str, i64) {
    match state {
        "running" | "building" => ("active", 1),
        "paused" => ("paused", 3),
        "shutoff" | "stopping" => ("stopped", 4),
        _ => ("error", 0),
    }
}

/// A server action that goes to the server's host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerAction {
    Stop,
    Start,
    Pause,
    Unpause,
    /// The guest is frozen in memory, as with pause; the server shows
    /// SUSPENDED until it is resumed. (No save to disk yet: its RAM stays
    /// allocated on the host.)
    Suspend,
    Resume,
    Reboot {
        hard: bool,
    },
}

/// What an action asks hostd (path and body), from which vm_states it is
/// allowed, the task_state while it runs, and Nova's name for it in the
/// instance actions.
pub struct HostAction {
    pub hostd: &'static str,
    pub body: Json,
    pub from: &'static [&'static str],
    pub task: &'static str,
    pub name: &'static str,
}

impl ServerAction {
    /// Nova's action body key (`os-stop`, `reboot`, ...) as an action; the
    /// reboot's `type` is given separately.
    pub fn from_nova(key: &str, hard_reboot: bool) -> Option<ServerAction> {
        Some(match key {
            "os-stop" => ServerAction::Stop,
            "os-start" => ServerAction::Start,
            "pause" => ServerAction::Pause,
            "unpause" => ServerAction::Unpause,
            "suspend" => ServerAction::Suspend,
            "resume" => ServerAction::Resume,
            "reboot" => ServerAction::Reboot { hard: hard_reboot },
            _ => return None,
        })
    }

    pub fn on_host(self) -> HostAction {
        let a = |hostd, from, task, name| HostAction {
            hostd,
            body: json!({}),
            from,
            task,
            name,
        };
        match self {
            ServerAction::Stop => a(
                "stop",
                &["active", "paused", "suspended"],
                "powering-off",
                "stop",
            ),
            ServerAction::Start => a("start", &["stopped"], "powering-on", "start"),
            ServerAction::Pause => a("pause", &["active"], "pausing", "pause"),
            ServerAction::Unpause => a("resume", &["paused"], "unpausing", "unpause"),
            ServerAction::Suspend => a("pause", &["active"], "suspending", "suspend"),
            ServerAction::Resume => a("resume", &["suspended"], "resuming", "resume"),
            ServerAction::Reboot { hard } => HostAction {
                hostd: "reboot",
                body: json!({ "hard": hard }),
                // A hard reboot is how a stuck or stopped server is recovered.
                from: if hard {
                    &["active", "stopped", "paused", "suspended", "error"]
                } else {
                    &["active"]
                },
                task: if hard { "rebooting_hard" } else { "rebooting" },
                name: "reboot",
            },
        }
    }

    /// The server's (vm_state, power_state) once hostd carried the action
    /// out and reports `state`.
    pub fn outcome(self, state: &str) -> (&'static str, i64) {
        match (self, state) {
            (ServerAction::Suspend, "paused") => ("suspended", POWER_SUSPENDED),
            (_, state) => from_hostd(state),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suspend_is_a_pause_that_shows_as_suspended() {
        let s = ServerAction::from_nova("suspend", false).unwrap();
        assert_eq!(s.on_host().hostd, "pause");
        assert_eq!(s.outcome("paused"), ("suspended", POWER_SUSPENDED));
        assert_eq!(
            ServerAction::Pause.outcome("paused"),
            ("paused", 3),
            "a pause stays a pause"
        );
    }

    #[test]
    fn only_a_hard_reboot_recovers_a_stopped_or_failed_server() {
        let hard = ServerAction::from_nova("reboot", true).unwrap().on_host();
        let soft = ServerAction::from_nova("reboot", false).unwrap().on_host();
        assert!(hard.from.contains(&"error") && hard.from.contains(&"stopped"));
        assert_eq!(soft.from, &["active"]);
        assert_eq!((hard.task, soft.task), ("rebooting_hard", "rebooting"));
        assert_eq!(hard.body, json!({"hard": true}));
    }

    #[test]
    fn unknown_actions_and_states() {
        assert_eq!(ServerAction::from_nova("os-migrateLive", false), None);
        assert_eq!(from_hostd("exploded"), ("error", 0));
        assert_eq!(from_hostd("stopping"), ("stopped", 4));
    }
}
