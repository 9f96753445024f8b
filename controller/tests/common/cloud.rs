//! A controller with one stand-in hostd registered, as most compute tests
//! want it, and the calls they make on servers.

use std::time::{Duration, Instant};

use super::hostd::{bootable, controller_config, Delays, StandInHostd};
use super::{admin_token, call, start_with, Controller};

/// A controller with the stand-in hostd registered, and its admin's token.
pub struct Cloud {
    pub hostd: StandInHostd,
    pub c: Controller,
    pub admin: String,
}

impl Cloud {
    pub fn start(delays: Delays) -> Cloud {
        Cloud::start_with(delays, "")
    }

    /// With `extra` lines of controller configuration.
    pub fn start_with(delays: Delays, extra: &str) -> Cloud {
        Cloud::start_on(None, delays, extra)
    }

    /// On the database at `url` (PostgreSQL), or a fresh SQLite one.
    pub fn start_on(url: Option<String>, delays: Delays, extra: &str) -> Cloud {
        let hostd = StandInHostd::start(delays);
        let c = start_with(url, &(controller_config() + extra));
        hostd.register(&c);
        let admin = admin_token(&c);
        Cloud { hostd, c, admin }
    }

    pub fn auth(&self) -> (&'static str, &str) {
        ("X-Auth-Token", self.admin.as_str())
    }

    /// Creates a server of a fresh 1-vCPU flavor; returns its id and the
    /// create's request id once it is ACTIVE.
    pub fn active_server(&self) -> (String, String) {
        let (flavor, image) = bootable(&self.c, &self.admin, 1, 128);
        let r = call(
            &self.c,
            "POST",
            "/compute/v2.1/servers",
            &[self.auth()],
            &format!(
                r#"{{"server": {{"name": "vm", "imageRef": "{image}", "flavorRef": "{flavor}"}}}}"#
            ),
        );
        assert_eq!(r.status, 202, "{}", r.body);
        let request = r.header("x-openstack-request-id").unwrap().to_owned();
        let id = r.json()["server"]["id"].as_str().unwrap().to_owned();
        self.wait(&id, "ACTIVE");
        (id, request)
    }

    pub fn show(&self, id: &str) -> serde_json::Value {
        call(
            &self.c,
            "GET",
            &format!("/compute/v2.1/servers/{id}"),
            &[self.auth()],
            "",
        )
        .json()["server"]
            .clone()
    }

    /// Waits (at most 10 s) until the server shows `want` with no task.
    pub fn wait(&self, id: &str, want: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.show(id);
            if s["status"] == want && s["OS-EXT-STS:task_state"].is_null() {
                return s;
            }
            assert!(Instant::now() < deadline, "wanted {want}, have {s}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
