//! The accept loop of one listener: each connection takes a slot from its [`Admission`] (all
//! connections, and per client address) or is refused; behind an L4 balancer
//! (`proxy_protocol`) it first names its client in a PROXY v2 header. Admitted connections
//! are served on tasks of their own ([`super::service`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::refusals::{REFUSAL_LOG_EVERY, REFUSERS, Refusals, refuse};
use super::service::connection;
use super::site::Site;
use crate::http::Holding;
use crate::state::AppState;

/// Accepts until shutdown: admits (or refuses) each connection and serves it on its own task.
pub(super) async fn accept_loop(listener: TcpListener, site: Site, state: AppState) {
    let refusals = Arc::new(Refusals::new());
    let refusers = Arc::new(Semaphore::new(REFUSERS));
    let mut flush = tokio::time::interval(REFUSAL_LOG_EVERY);
    let site = Arc::new(site);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = state.shutdown.cancelled() => break,
            _ = flush.tick() => {
                refusals.flush(site.name);
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // e.g. out of file descriptors: back off instead of spinning.
                    if let Some(failed) = refusals.accept_failed.hit() {
                        tracing::warn!(listener = site.name, error = %e, failed, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Replies and events are small writes a client waits for: each goes out at once, not
        // after the client's delayed ACK of the one before (Nagle: a reply followed by its
        // task's event waited ~40 ms).
        let _ = tcp.set_nodelay(true);
        if site.proxy_protocol {
            admit_proxied(tcp, peer, &site, &state, &refusals, &refusers);
            continue;
        }
        match site.admission.admit(peer.ip()) {
            Ok(slot) => {
                let stream = Holding::new(tcp, slot);
                state
                    .tracker
                    .spawn(connection(stream, peer, site.clone(), state.clone()));
            }
            Err(refusal) => {
                state.metrics.refused(refusal.label());
                refusals.log(site.name, refusal, peer);
                refuse(tcp, refusal, site.tls.is_some(), &refusers);
            }
        }
    }
}

/// A connection on a `proxy_protocol` listener: closed at once unless its peer is a trusted
/// proxy; then it takes a slot in the total (its client is not known yet) and waits for its
/// PROXY header on a task of its own ([`proxied`]).
fn admit_proxied(
    tcp: TcpStream,
    balancer: SocketAddr,
    site: &Arc<Site>,
    state: &AppState,
    refusals: &Arc<Refusals>,
    refusers: &Arc<Semaphore>,
) {
    if !site.trusted.trusts(balancer.ip()) {
        state.metrics.refused("proxy_protocol");
        refusals.log_proxy(site.name, &"the peer is not in trusted_proxies", balancer);
        return;
    }
    match site.admission.admit_unattributed() {
        Ok(slot) => {
            let proxied = proxied(
                tcp,
                slot,
                balancer,
                site.clone(),
                state.clone(),
                refusals.clone(),
                refusers.clone(),
            );
            state.tracker.spawn(proxied);
        }
        Err(refusal) => {
            state.metrics.refused(refusal.label());
            refusals.log(site.name, refusal, balancer);
            refuse(tcp, refusal, site.tls.is_some(), refusers);
        }
    }
}

/// Reads a trusted balancer's PROXY header within `http_header_timeout` (closing the
/// connection without one), counts the connection against the client it names (the balancer
/// itself for a `LOCAL` health check), and serves it as that client's.
async fn proxied(
    mut tcp: TcpStream,
    mut slot: crate::admission::Slot,
    balancer: SocketAddr,
    site: Arc<Site>,
    state: AppState,
    refusals: Arc<Refusals>,
    refusers: Arc<Semaphore>,
) {
    let timeout = state.config.http_header_timeout;
    let said = tokio::select! {
        _ = state.shutdown.cancelled() => return,
        said = tokio::time::timeout(timeout, crate::proxy_protocol::read(&mut tcp)) => said,
    };
    let client = match said {
        Ok(Ok(client)) => client.unwrap_or(balancer),
        Ok(Err(bad)) => {
            state.metrics.refused("proxy_protocol");
            refusals.log_proxy(site.name, &bad, balancer);
            return;
        }
        Err(_) => {
            state.metrics.refused("proxy_protocol");
            let why = format!("no PROXY header within {} s", timeout.as_secs_f64());
            refusals.log_proxy(site.name, &why, balancer);
            return;
        }
    };
    if let Err(refusal) = slot.attribute(client.ip()) {
        state.metrics.refused(refusal.label());
        refusals.log(site.name, refusal, client);
        drop(slot);
        refuse(tcp, refusal, site.tls.is_some(), &refusers);
        return;
    }
    connection(Holding::new(tcp, slot), client, site, state).await;
}
