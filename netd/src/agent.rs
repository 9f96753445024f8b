//! netd's reconciler: report, fetch the intended state, converge, repeat.
//! It reads the intended state each pass and the kernel's state each pass,
//! so a netd killed anywhere picks up where the kernel is. While the
//! controller is away the datapath stays as it was (guests keep talking);
//! it changes only on an answer.

use netd_proto::Report;

use crate::config::Config;
use crate::controller;
use crate::datapath::Datapath;
use crate::nl::Netlink;

pub async fn run(config: Config) -> anyhow::Result<()> {
    let nl = Netlink::connect()?;
    let mut datapath = Datapath::new(nl, &config);
    let mut report = Report {
        vtep: config.vtep,
        plugged: Vec::new(),
        gateway: config.gateway,
        floating: Vec::new(),
    };
    let mut reachable = None;
    loop {
        let mut again_now = false;
        match controller::sync(&config, &report).await {
            Ok(want) => {
                if reachable != Some(true) {
                    tracing::info!(url = config.controller_url, "reporting to the controller");
                    reachable = Some(true);
                }
                match datapath.converge(&want).await {
                    Ok(mut done) => {
                        done.plugged.sort();
                        done.floating.sort();
                        // Tell the controller at once what changed.
                        again_now =
                            done.plugged != report.plugged || done.floating != report.floating;
                        report.plugged = done.plugged;
                        report.floating = done.floating;
                    }
                    Err(e) => tracing::warn!("converging the datapath: {e}"),
                }
            }
            Err(e) => {
                if reachable != Some(false) {
                    tracing::warn!("{e}; keeping the datapath as it is");
                    reachable = Some(false);
                }
            }
        }
        if !again_now {
            tokio::time::sleep(config.sync).await;
        }
    }
}
