//! Nova's interface attachments (`os-interface`): a NIC more or less for a
//! server that exists.
//!
//! An attach makes the port (or binds the user's) on the server's host,
//! then has hostd plug it: into the running guest (PCI hotplug), or into
//! the stopped server's next start. The client waits for it, as Nova's API
//! waits for its compute service; if the host cannot plug it, the port is
//! released again. A detach is answered at once (202): hostd unplugs the NIC
//! once the guest lets go of it, and then the port is released; a guest that
//! does not let go keeps the NIC and its port, and the failure is in the
//! server's instance actions. As in Nova, either needs a server with no task
//! in progress and sets none itself: `openstack server remove network`
//! detaches each NIC on the network without waiting, and hostd takes one
//! change of an instance at a time anyway.

use hostd_proto::instance::PortNic;

use super::{record_action, server_host, visible, ComputeError};
use crate::app::App;
use crate::compute::servers::Server;
use crate::context::RequestContext;
use crate::hostd_client::Hostd;
use crate::network::model::Port;
use crate::network::nova::{tap_name, NicRequest, Requested, COMPUTE_OWNER};
use crate::network::NetworkError;

/// The vm_states a NIC may be attached or detached in (Nova's).
const FROM: &[&str] = &["active", "paused", "stopped", "suspended"];

/// The server's NICs' ports, in their order.
pub async fn list(app: &App, ctx: &RequestContext, id: &str) -> Result<Vec<Port>, ComputeError> {
    visible(app, ctx, id).await?;
    app.network.server_ports(id).await.map_err(network_error)
}

/// One of the server's NICs' ports.
pub async fn show(
    app: &App,
    ctx: &RequestContext,
    id: &str,
    port_id: &str,
) -> Result<Port, ComputeError> {
    list(app, ctx, id)
        .await?
        .into_iter()
        .find(|p| p.std.id == port_id)
        .ok_or_else(|| not_attached(id, port_id))
}

/// Attaches a NIC (a network, with an address on it perhaps, or a port; the
/// project's network when neither is named) and returns its port once the
/// host has plugged it.
pub async fn attach(
    app: &App,
    ctx: &RequestContext,
    id: &str,
    wanted: Requested,
) -> Result<Port, ComputeError> {
    let server = visible(app, ctx, id).await?;
    // The caller's view of the network or port, with Nova's errors.
    let nic = app
        .network
        .check_nics(ctx, wanted)
        .await
        .map_err(attach_error)?
        .pop()
        .ok_or_else(|| {
            ComputeError::BadRequest(format!(
                "No specific network was requested and none are available for project '{}'.",
                server.project_id
            ))
        })?;
    let (hostd, _) = ready_for(app, &server, "attach_interface").await?;
    record_action(app, ctx, &server, "attach_interface").await;
    let attached = plug(
        app,
        &server.id,
        &server.project_id,
        server.host_id.as_deref(),
        &hostd,
        &nic,
    )
    .await;
    let failure = attached.as_ref().err().map(ToString::to_string);
    if let Err(e) = app
        .actions
        .finish(&server.id, &ctx.request_id, failure.as_deref())
        .await
    {
        tracing::warn!(server = %id, "recording the end of attach_interface: {e}");
    }
    attached
}

/// The port, made or bound, then plugged by the host; the port is released
/// again when the host cannot plug it.
async fn plug(
    app: &App,
    id: &str,
    project: &str,
    host: Option<&str>,
    hostd: &Hostd,
    nic: &NicRequest,
) -> Result<Port, ComputeError> {
    let host = host.ok_or_else(|| ComputeError::Conflict(format!("instance {id} has no host")))?;
    let port = app
        .network
        .plug_interface(project, id, host, nic)
        .await
        .map_err(attach_error)?;
    let mtu = match app.network.store().network(&port.network_id).await {
        Ok(n) => n.and_then(|n| u16::try_from(n.mtu).ok()),
        Err(e) => {
            tracing::warn!(port = port.std.id, "the port's network: {e}");
            None
        }
    };
    let wanted = PortNic {
        tap: tap_name(&port.std.id),
        mac: port.mac_address.clone(),
        mtu,
    };
    match hostd.add_nic(id, &wanted).await {
        Ok(_) => {
            tracing::info!(server = %id, port = %port.std.id, "interface attached");
            Ok(port)
        }
        Err(e) => {
            tracing::warn!(server = %id, port = %port.std.id, "the host did not plug it: {e}");
            if let Err(e) = app.network.unplug_interface(id, &port.std.id).await {
                // The server's delete releases it at the latest.
                tracing::warn!(server = %id, "releasing the port again: {e}");
            }
            Err(ComputeError::HostFailed(format!(
                "Failed to attach network adapter device to {id}: {e}"
            )))
        }
    }
}

/// Starts detaching the NIC of `port_id`: answered at once, carried out by
/// the host in the background.
pub async fn detach(
    app: &App,
    ctx: &RequestContext,
    id: &str,
    port_id: &str,
) -> Result<(), ComputeError> {
    let server = visible(app, ctx, id).await?;
    let attached = app
        .network
        .store()
        .port(port_id)
        .await?
        .is_some_and(|p| p.device_id == server.id && p.device_owner == COMPUTE_OWNER);
    if !attached {
        return Err(not_attached(id, port_id));
    }
    let (hostd, background) = ready_for(app, &server, "detach_interface").await?;
    record_action(app, ctx, &server, "detach_interface").await;
    let (id, port_id, request_id) = (id.to_owned(), port_id.to_owned(), ctx.request_id.clone());
    tokio::spawn(async move { unplug(&background, &id, &hostd, &port_id, &request_id).await });
    Ok(())
}

/// The host unplugs the NIC (once its guest lets go), then the port goes.
async fn unplug(app: &App, id: &str, hostd: &Hostd, port_id: &str, request_id: &str) {
    let tap = tap_name(port_id);
    let failure = match hostd.remove_nic(id, &tap).await {
        // Not there (a detach repeated after a cut one): as good as removed.
        Ok(_) => None,
        Err(e) if e.is_not_found() => None,
        Err(e) => Some(format!(
            "Failed to detach network adapter device from {id}: {e}"
        )),
    };
    let failure = match failure {
        Some(f) => Some(f),
        None => app
            .network
            .unplug_interface(id, port_id)
            .await
            .err()
            .map(|e| format!("releasing port {port_id}: {e}")),
    };
    match &failure {
        None => tracing::info!(server = %id, port = %port_id, "interface detached"),
        Some(f) => tracing::warn!(server = %id, port = %port_id, "{f}"),
    }
    if let Err(e) = app.actions.finish(id, request_id, failure.as_deref()).await {
        tracing::warn!(server = %id, "recording the end of detach_interface: {e}");
    }
}

/// The server's hostd and the app to run background work on, if the server
/// may have a NIC attached or detached now (Nova's vm_states, no task).
async fn ready_for(
    app: &App,
    server: &Server,
    name: &str,
) -> Result<(Hostd, std::sync::Arc<App>), ComputeError> {
    let why = match &server.task_state {
        Some(t) => Some(format!("task_state {t}")),
        None if !FROM.contains(&server.vm_state.as_str()) => {
            Some(format!("vm_state {}", server.vm_state))
        }
        None => None,
    };
    let hostd = match why {
        Some(_) => None,
        None => server_host(app, server).await,
    };
    let Some(hostd) = hostd else {
        return Err(ComputeError::Conflict(format!(
            "Cannot '{name}' instance {} while it is in {}",
            server.id,
            why.unwrap_or_else(|| format!("vm_state {}", server.vm_state))
        )));
    };
    let background = app
        .me
        .upgrade()
        .ok_or_else(|| ComputeError::Unavailable("the controller is stopping".into()))?;
    Ok((hostd, background))
}

fn not_attached(id: &str, port_id: &str) -> ComputeError {
    ComputeError::NotFound(format!("Port {port_id} is not attached to instance {id}."))
}

/// Neutron's errors as Nova's attach answers them: what is not there is
/// 404, what is in use 409, the rest 400.
fn attach_error(e: NetworkError) -> ComputeError {
    match e {
        NetworkError::Neutron {
            status: 409,
            message,
            ..
        } => ComputeError::Conflict(message),
        NetworkError::Neutron { kind, message, .. }
            if kind == "PortNotFound" || kind == "NetworkNotFound" =>
        {
            ComputeError::NotFound(message)
        }
        NetworkError::Neutron { message, .. } => ComputeError::BadRequest(message),
        NetworkError::Store(e) => ComputeError::Store(e),
    }
}

fn network_error(e: NetworkError) -> ComputeError {
    match e {
        NetworkError::Store(e) => ComputeError::Store(e),
        other => ComputeError::BadRequest(other.to_string()),
    }
}
