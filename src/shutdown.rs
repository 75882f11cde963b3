//! One drain signal for the whole process: SIGTERM or SIGINT cancels a
//! [`CancellationToken`] that every server and loop watches; a second signal exits at once.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Cancels the returned token on the first SIGTERM/SIGINT; exits the process with status
/// 130 on the second, for an operator who does not want to wait for the grace period.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received; draining (send again to exit immediately)");
        trigger.cancel();
        wait_for_signal().await;
        tracing::warn!("second shutdown signal; exiting now");
        std::process::exit(130);
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Waits for `fut` but no longer than `grace` after shutdown began; returns whether it
/// finished in time.
pub async fn within_grace<F: std::future::Future>(grace: Duration, fut: F) -> bool {
    tokio::time::timeout(grace, fut).await.is_ok()
}
