//! The one way a poolgate server is started, for `poolgate serve` and the tests alike:
//! [`Application::build`] turns a config into bound listeners and a started state, and
//! [`Application::run_until_stopped`] serves them until a [`ServerHandle`] (or a dropped
//! application) stops it. Building binds, so a test learns its port (`127.0.0.1:0`) before
//! anything is served, and a config that cannot be served fails before anything is.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::provision::Provisioner;
use crate::state::AppState;

/// A built server: its listeners are bound and its state is open and started (recovery, seed
/// tasks, the event bus), but nothing is accepted until [`Application::run_until_stopped`].
/// Dropping it unrun stops what building started.
pub struct Application {
    state: AppState,
    listener: TcpListener,
    local_addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    /// The `metrics_listen` listener and its bound address.
    metrics: Option<(TcpListener, SocketAddr)>,
    stop_on_drop: StopOnDrop,
}

impl Application {
    /// Validates the config and builds the state (the store opened), binds `listen` (and
    /// `metrics_listen`), loads the TLS certificate and key when configured, and starts the
    /// state's background work.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        Self::build_with_provisioners(config, HashMap::new()).await
    }

    /// Like [`Application::build`], with extra provisioners by name (tests inject their own).
    pub async fn build_with_provisioners(
        config: Config,
        extra: HashMap<String, Arc<dyn Provisioner>>,
    ) -> anyhow::Result<Application> {
        // First: the config is validated there, before anything is bound.
        let state = AppState::with_provisioners(config, extra).await?;
        let stop_on_drop = StopOnDrop(state.clone());
        let config = &state.config;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| listen_error(&e, config.listen, "listen"))?;
        let local_addr = listener.local_addr()?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::acceptor(cert, key)?),
            _ => None,
        };
        // The WebAuthn relying party's origin is http(s)://localhost:PORT without public_url.
        state
            .auth
            .keys
            .listening(local_addr.port(), tls.is_some())?;
        let metrics = match config.metrics_listen {
            Some(at) => {
                let listener = TcpListener::bind(at)
                    .await
                    .map_err(|e| listen_error(&e, at, "metrics_listen"))?;
                let at = listener.local_addr()?;
                Some((listener, at))
            }
            None => None,
        };
        state.start().await?;
        Ok(Application {
            state,
            listener,
            local_addr,
            tls,
            metrics,
            stop_on_drop,
        })
    }

    /// The address the main listener is bound to (its port, when `listen` asked for 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the `metrics_listen` listener, if one is configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(_, at)| *at)
    }

    /// Whether the main listener serves TLS (`wss://`, `https://`).
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// A handle that stops the server and waits for it, usable from anywhere (a signal
    /// handler, a test) while [`Application::run_until_stopped`] runs.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            local_addr: self.local_addr,
            shutdown: self.state.shutdown.clone(),
            stop_now: self.state.stop_now.clone(),
            tracker: self.state.tracker.clone(),
        }
    }

    /// Serves until stopped ([`ServerHandle::stop`]), then waits for every connection,
    /// upgraded socket and background job to finish (sockets are closed with 1001, requests
    /// in flight finish).
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Application {
            state,
            listener,
            local_addr: addr,
            tls,
            metrics,
            stop_on_drop: _stop_on_drop,
        } = self;
        if let Some((listener, at)) = metrics {
            tracing::info!(%at, "metrics listening (http://{at}/metrics); not served on the main port");
            crate::server::spawn_metrics(listener, &state);
        }
        let portal = portal_url(&state.config, addr, tls.is_some());
        if tls.is_some() {
            tracing::info!(%addr, "poolgate listening with TLS (WebSocket RPC at wss://{addr}/; portal: {portal})");
        } else {
            tracing::info!(%addr, "poolgate listening (WebSocket RPC at ws://{addr}/; portal: {portal})");
        }
        crate::server::run(listener, tls, state).await;
        Ok(())
    }
}

/// Why `key` (`listen`, `metrics_listen`) cannot be bound to `at`, and what to do: another
/// process on the port (and how to find it), a privileged port, an address not of this machine.
fn listen_error(e: &std::io::Error, at: SocketAddr, key: &str) -> anyhow::Error {
    let port = at.port();
    let flag = if key == "listen" {
        "--listen or listen"
    } else {
        "metrics_listen"
    };
    let what = match e.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "the port is in use by another process (another poolgate?); find it with \
             `ss -ltnp 'sport = :{port}'` (as root to see its name), stop it, or choose another \
             address with {flag}"
        ),
        std::io::ErrorKind::PermissionDenied if port < 1024 => format!(
            "ports below 1024 need root or the CAP_NET_BIND_SERVICE capability \
             (AmbientCapabilities=CAP_NET_BIND_SERVICE in the systemd unit); or choose a port \
             from 1024 up with {flag}"
        ),
        std::io::ErrorKind::AddrNotAvailable => format!(
            "{} is not an address of this machine; use one of its addresses (`ip -brief \
             address`), 0.0.0.0 for all, or 127.0.0.1, with {flag}",
            at.ip()
        ),
        _ => format!("choose another address with {flag}"),
    };
    anyhow::anyhow!("{key}: cannot listen on {at}: {e}; {what}")
}

/// Stops a running (or built) application from outside it.
#[derive(Clone)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    shutdown: CancellationToken,
    stop_now: CancellationToken,
    tracker: TaskTracker,
}

impl ServerHandle {
    /// The address the main listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Begins a graceful shutdown: nothing new is accepted, sockets are closed with 1001,
    /// requests in flight finish. Returns at once; await [`ServerHandle::stopped`] for the
    /// end. Stopping twice is stopping once.
    pub fn stop(&self) {
        self.shutdown.cancel();
    }

    /// Stops without waiting out `drain_timeout`: tasks still running are cancelled now (as
    /// with `drain_timeout = 0`). What a second SIGTERM or Ctrl-C does.
    pub fn stop_now(&self) {
        self.stop_now.cancel();
        self.shutdown.cancel();
    }

    /// Resolves once the server has stopped and every connection, socket and background job
    /// has finished (at once if that has already happened).
    pub async fn stopped(&self) {
        self.tracker.wait().await;
    }
}

/// Stops an application however it ends — run to completion, dropped unrun, or its run
/// future dropped — so that background work ends and [`ServerHandle::stopped`] resolves.
struct StopOnDrop(AppState);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.shutdown.cancel();
        self.0.stop_now.cancel();
        // `stopped` waits for the tracker to be closed as well as empty.
        self.0.tracker.close();
    }
}

/// Where a person opens the web portal: `public_url` when set, else this address (`localhost`
/// for an address on every interface or on loopback: browsers allow security keys there).
fn portal_url(config: &Config, addr: std::net::SocketAddr, tls: bool) -> String {
    if let Some(url) = &config.public_url {
        return format!("{}/", url.trim_end_matches('/'));
    }
    let scheme = if tls { "https" } else { "http" };
    let ip = addr.ip();
    if ip.is_unspecified() || ip.is_loopback() {
        format!("{scheme}://localhost:{}/", addr.port())
    } else {
        format!("{scheme}://{addr}/")
    }
}
