//! Starting and stopping: build the state from [`Settings`], bind, serve until a shutdown
//! signal, sweep expired sessions in the background. `main` and the tests share this code.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::Verifier;
use crate::auth::mint::{TokenSpec, mint_hs256};
use crate::clock::{Clock, SystemClock};
use crate::config::Settings;
use crate::connections::{self, ConnectionLimits};
use crate::events::{Dispatcher, EventMetrics};
use crate::http::metrics::Metrics;
use crate::http::{self, AppState};
use crate::service::Sessions;
use crate::store;

/// How long in-flight requests may take to finish after a shutdown signal.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);
/// How many expired sessions one sweep statement removes.
const SWEEP_BATCH: usize = 500;

/// Opens the store and builds the shared state, and, with `--webhook-url`, the dispatcher of
/// the events (the store records them from then on).
pub async fn build_state(settings: &Settings, clock: Arc<dyn Clock>) -> Result<(AppState, Option<Dispatcher>), String> {
    let verifier = Verifier::new(&settings.auth)?;
    let store = store::open(&settings.store)
        .await
        .map_err(|e| format!("cannot open the store {}: {e}", settings.store))?;
    let mut metrics = Metrics::default();
    let dispatcher = match &settings.webhooks {
        None => None,
        Some(webhooks) => {
            let destinations = u16::try_from(webhooks.urls.len()).map_err(|_| "too many --webhook-url")?;
            store.set_event_destinations(destinations);
            let event_metrics = EventMetrics::default();
            metrics.register_events(&event_metrics);
            Some(Dispatcher::new(
                Arc::clone(&store),
                Arc::clone(&clock),
                webhooks.clone(),
                event_metrics,
            )?)
        }
    };
    let sessions = Sessions::new(store, clock, settings.policy.clone());
    Ok((
        AppState::new(sessions, Arc::new(verifier), Arc::new(metrics)),
        dispatcher,
    ))
}

/// Removes expired sessions about every `interval` until `stop` turns true. Each wait is
/// jittered (0.75 to 1.25 times the interval) so that many instances sharing one store do not
/// all sweep at the same moment.
pub fn spawn_sweeper(state: AppState, interval: Duration, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(jittered(interval)) => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
            match state.sessions.sweep(SWEEP_BATCH).await {
                Ok(0) => {}
                Ok(removed) => {
                    state.metrics.record_swept(removed);
                    tracing::info!(removed, "swept expired sessions");
                }
                Err(e) => tracing::warn!(error = %e, "sweeping expired sessions failed"),
            }
        }
    })
}

fn jittered(interval: Duration) -> Duration {
    let unit = f64::from(getrandom::u32().unwrap_or(u32::MAX / 2)) / f64::from(u32::MAX);
    interval.mul_f64(0.75 + unit / 2.0)
}

/// Runs the service as `session-context serve` does, until SIGTERM or SIGINT.
pub async fn run(settings: Settings) -> Result<(), String> {
    let shutdown = shutdown_signal()?;
    let (state, dispatcher) = build_state(&settings, Arc::new(SystemClock)).await?;
    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%address, store = %settings.store, "session-context is listening");
    if let Some(secret) = &settings.dev_secret {
        print_dev_guide(secret, &address.to_string())?;
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let sweeper = spawn_sweeper(state.clone(), settings.sweep_interval, stop_rx.clone());
    let dispatcher = dispatcher.map(|d| tokio::spawn(d.run(stop_rx)));
    let app = http::router(
        state,
        &http::RequestLimits {
            max_body_bytes: settings.max_body_bytes,
            max_inflight_body_bytes: settings.max_inflight_body_bytes,
            request_timeout: settings.request_timeout,
            cors_origins: settings.cors_origins.clone(),
            tenant_cors_origins: settings.tenant_cors_origins.clone(),
        },
    );
    let limits = ConnectionLimits {
        max_connections: settings.max_connections,
        header_timeout: settings.header_timeout,
        idle_timeout: settings.idle_timeout,
        max_concurrent_streams: settings.max_concurrent_streams,
        max_header_bytes: settings.max_header_bytes,
        drain_deadline: DRAIN_DEADLINE,
    };
    connections::serve(listener, app, limits, shutdown).await;
    let _ = stop_tx.send(true);
    let _ = sweeper.await;
    if let Some(dispatcher) = dispatcher {
        let _ = dispatcher.await;
    }
    tracing::info!("session-context stopped");
    Ok(())
}

/// A future that completes on SIGTERM or SIGINT. The handlers are installed when this is
/// called, not when the future is first polled, so a signal that arrives while the service is
/// still starting is not lost (nor does it kill the process).
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()> + Send, String> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;
        Ok(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
            tracing::info!("shutdown signal received; finishing requests in flight");
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutdown signal received; finishing requests in flight");
        })
    }
}

/// Prints demo tokens and a curl line for `serve --dev`.
fn print_dev_guide(secret: &[u8], address: &str) -> Result<(), String> {
    let tenant = "demo";
    let session = format!("demo-{}", crate::clock::SystemClock.now());
    let day = Duration::from_secs(24 * 3600);
    let management = mint_hs256(
        secret,
        &TokenSpec {
            tenant: Some(tenant.into()),
            scope: Some("session_context.context_manage".into()),
            ttl: day,
            ..Default::default()
        },
    )?;
    let anonymous = mint_hs256(
        secret,
        &TokenSpec {
            tenant: Some(tenant.into()),
            session_id: Some(session.clone()),
            ttl: day,
            ..Default::default()
        },
    )?;
    let base = format!("http://{address}/session-context/{tenant}");
    println!(
        "\nsession-context is running in --dev mode (tokens valid for 24 hours).\n\n\
         secret:            {secret}\n\
         management token:  {management}\n\
         anonymous token:   {anonymous}   (sessionId {session})\n\n\
         Try it:\n\
         curl -i -X PATCH '{base}/me/context?upsert=true' -H 'Authorization: Bearer {anonymous}' \\\n  \
         -H 'Content-Type: application/json' -d '{{\"currency\":\"EUR\",\"metadata\":{{\"version\":1}}}}'\n\
         curl -s '{base}/me/context' -H 'Authorization: Bearer {anonymous}'\n\
         curl -s '{base}/context/{session}' -H 'Authorization: Bearer {management}'\n",
        secret = String::from_utf8_lossy(secret),
    );
    Ok(())
}
