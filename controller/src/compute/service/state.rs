//! States: hostd's instance states as Nova's (vm_state, power_state), and
//! what each server action asks of hostd, from which states, under which
//! task. Pure tables, no I/O.

use hostd_proto::instance::{Action, State};

/// The task_state of a server whose delete is recorded.
pub const DELETING: &str = "deleting";

/// Nova's power_state for a suspended server.
pub const POWER_SUSPENDED: i64 = 7;

/// hostd's instance state as (vm_state, power_state).
pub fn from_hostd(state: State) -> (&'static str, i64) {
    match state {
        State::Running | State::Building => ("active", 1),
        State::Paused => ("paused", 3),
        State::Shutoff | State::Stopping => ("stopped", 4),
        State::Error => ("error", 0),
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

/// What an action asks hostd, from which vm_states it is allowed, the
/// task_state while it runs, and Nova's name for it in the instance actions.
pub struct HostAction {
    pub hostd: Action,
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
            from,
            task,
            name,
        };
        match self {
            ServerAction::Stop => a(
                Action::Stop,
                &["active", "paused", "suspended"],
                "powering-off",
                "stop",
            ),
            ServerAction::Start => a(Action::Start, &["stopped"], "powering-on", "start"),
            ServerAction::Pause => a(Action::Pause, &["active"], "pausing", "pause"),
            ServerAction::Unpause => a(Action::Resume, &["paused"], "unpausing", "unpause"),
            ServerAction::Suspend => a(Action::Pause, &["active"], "suspending", "suspend"),
            ServerAction::Resume => a(Action::Resume, &["suspended"], "resuming", "resume"),
            ServerAction::Reboot { hard } => HostAction {
                hostd: Action::Reboot { hard },
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
    pub fn outcome(self, state: State) -> (&'static str, i64) {
        match (self, state) {
            (ServerAction::Suspend, State::Paused) => ("suspended", POWER_SUSPENDED),
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
        assert_eq!(s.on_host().hostd, Action::Pause);
        assert_eq!(s.outcome(State::Paused), ("suspended", POWER_SUSPENDED));
        assert_eq!(
            ServerAction::Pause.outcome(State::Paused),
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
        assert_eq!(hard.hostd, Action::Reboot { hard: true });
    }

    #[test]
    fn unknown_actions_and_states() {
        assert_eq!(ServerAction::from_nova("os-migrateLive", false), None);
        assert_eq!(from_hostd(State::Error), ("error", 0));
        assert_eq!(from_hostd(State::Stopping), ("stopped", 4));
    }
}
