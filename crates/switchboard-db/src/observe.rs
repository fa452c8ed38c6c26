//! One hook for whoever keeps figures about database calls (Switchboard's metrics):
//! every statement's instance, duration and outcome, reported after it ran.
//!
//! The hook is a plain function set once per process; without one, nothing is done
//! beyond reading a `OnceLock`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::DbError;

/// Receives `(instance name, time the statement took, whether it succeeded)`.
pub type Observer = fn(&str, Duration, bool);

static OBSERVER: OnceLock<Observer> = OnceLock::new();

/// Sets the process's observer of database calls; only the first call counts.
///
/// ```
/// fn record(instance: &str, took: std::time::Duration, ok: bool) {
///     let _ = (instance, took, ok);
/// }
/// switchboard::db::set_observer(record);
/// ```
pub fn set_observer(observer: Observer) {
    let _ = OBSERVER.set(observer);
}

/// Runs one statement's future and reports it.
pub(crate) async fn timed<T>(
    instance: &str,
    call: impl std::future::Future<Output = Result<T, DbError>>,
) -> Result<T, DbError> {
    let Some(observe) = OBSERVER.get() else {
        return call.await;
    };
    let started = Instant::now();
    let result = call.await;
    observe(instance, started.elapsed(), result.is_ok());
    result
}
