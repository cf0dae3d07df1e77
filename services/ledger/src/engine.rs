//! The posting engine: one writer task per ledger process that gathers concurrent
//! postings into commit groups.
//!
//! A request is queued with a reply channel. The writer takes the first waiting
//! request and every other one already queued, up to [`GroupConfig::max_size`];
//! while the previous groups were larger than one (the ledger is under load) it
//! may wait up to [`GroupConfig::max_wait`] for the group to fill to that size
//! again, and at low load it never waits, so a lone request is written at once.
//! Requests that arrive while a group commits simply form the next one, which is
//! what makes the groups grow with the load.
//!
//! The group's transaction runs in a task of its own that nothing cancels: a
//! caller that goes away (a client disconnect, a deadline) stops waiting for its
//! answer, never the group. Each caller is answered only after the group
//! committed, with its own outcome. If a group fails with an internal error (not
//! a transient conflict, which the store retries, nor an unreachable database,
//! which fails everyone alike), each of its requests is tried again alone, so
//! that one request that the database refuses cannot fail the others.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bank_domain::{
    ErrorCode,
    ledger::plan::{Outcome, PostingRequest, Proposal},
};
use tokio::sync::{mpsc, oneshot};

use crate::store::{LedgerStore, StoreError};

/// How commit groups are formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupConfig {
    /// At most this many requests in one transaction.
    pub max_size: usize,
    /// The longest a group waits for more requests, and only while under load.
    /// The runtime's timer rounds it up to its next millisecond.
    pub max_wait: Duration,
    /// Requests queued before new ones are refused as busy.
    pub queue_capacity: usize,
}

impl Default for GroupConfig {
    fn default() -> GroupConfig {
        GroupConfig {
            max_size: 256,
            max_wait: Duration::from_micros(200),
            queue_capacity: 8_192,
        }
    }
}

struct Job {
    proposal: Proposal,
    reply: oneshot::Sender<Result<Outcome, StoreError>>,
    /// The span of the caller's wait, which the group's span links to.
    waiting: opentelemetry::trace::SpanContext,
}

/// The handle requests are submitted through. Cloning it shares the one writer.
#[derive(Clone)]
pub struct PostingEngine {
    queue: mpsc::Sender<Job>,
}

impl PostingEngine {
    /// Starts the writer task on the current runtime.
    pub fn start(store: Arc<LedgerStore>, config: GroupConfig) -> PostingEngine {
        let (queue, receiver) = mpsc::channel(config.queue_capacity.max(1));
        tokio::spawn(run_writer(store, receiver, config));
        PostingEngine { queue }
    }

    /// Posts `request` in the next commit group and returns its outcome once the
    /// group committed. Dropping the returned future abandons the answer only.
    pub async fn submit(&self, request: PostingRequest) -> Result<Outcome, StoreError> {
        use opentelemetry::trace::TraceContextExt;
        use tracing::Instrument;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        // The request's wait for its group: one transaction serves many
        // requests, so the group has a span of its own that links to each wait.
        let wait = tracing::info_span!(
            "ledger.commit_wait",
            otel.kind = "internal",
            ledger.posting.kind = request.kind_name(),
        );
        let waiting = wait.context().span().span_context().clone();
        let (reply, answer) = oneshot::channel();
        let job = Job {
            proposal: Proposal::new(request),
            reply,
            waiting,
        };
        self.queue.try_send(job).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => StoreError::Busy,
            mpsc::error::TrySendError::Closed(_) => {
                StoreError::WriterStopped("the queue is closed".into())
            }
        })?;
        answer
            .instrument(wait)
            .await
            .map_err(|_| StoreError::WriterStopped("no answer from the writer".into()))?
    }
}

async fn run_writer(
    store: Arc<LedgerStore>,
    mut receiver: mpsc::Receiver<Job>,
    config: GroupConfig,
) {
    let mut previous_size = 0usize;
    while let Some(first) = receiver.recv().await {
        let mut group = vec![first];
        gather(&mut receiver, &mut group, config.max_size);
        if previous_size > 1 && group.len() < previous_size.min(config.max_size) {
            let deadline = tokio::time::Instant::now() + config.max_wait;
            while group.len() < previous_size.min(config.max_size) {
                match tokio::time::timeout_at(deadline, receiver.recv()).await {
                    Ok(Some(job)) => {
                        group.push(job);
                        gather(&mut receiver, &mut group, config.max_size);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
        previous_size = group.len();
        commit(&store, group).await;
    }
}

/// Takes every job already queued, up to `max_size` in the group.
fn gather(receiver: &mut mpsc::Receiver<Job>, group: &mut Vec<Job>, max_size: usize) {
    while group.len() < max_size {
        match receiver.try_recv() {
            Ok(job) => group.push(job),
            Err(_) => break,
        }
    }
}

/// The span of one commit group's transaction: a trace of its own, since it
/// serves many requests, linked to each request's wait.
fn group_span(group: &[Job]) -> tracing::Span {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let span = tracing::info_span!(
        "ledger.commit_group",
        otel.kind = "internal",
        ledger.group.size = group.len(),
    );
    for job in group {
        if job.waiting.is_valid() {
            span.add_link(job.waiting.clone());
        }
    }
    span
}

async fn commit(store: &Arc<LedgerStore>, group: Vec<Job>) {
    let size = group.len();
    let started = Instant::now();
    let span = group_span(&group);
    let proposals: Vec<Proposal> = group.iter().map(|job| job.proposal.clone()).collect();
    let result = run_detached(store, proposals, span).await;
    metrics::histogram!("ledger_commit_group_size").record(size as f64);
    metrics::histogram!("ledger_commit_group_seconds").record(started.elapsed().as_secs_f64());
    match result {
        Ok(outcomes) => {
            for (job, outcome) in group.into_iter().zip(outcomes) {
                record(&job.proposal.request, &outcome);
                // The caller may have gone away; its posting stands all the same.
                let _ = job.reply.send(Ok(outcome));
            }
        }
        // A database that cannot be reached, or is too busy, fails every request
        // alike: only a failure that one request may have caused is worth
        // isolating.
        Err(error) if size > 1 && bank_kit::DomainError::code(&error) == ErrorCode::Internal => {
            tracing::warn!(error = %error, size, "commit group failed; posting its requests one by one");
            for job in group {
                let alone = group_span(std::slice::from_ref(&job));
                let outcome = run_detached(store, vec![job.proposal.clone()], alone)
                    .await
                    .and_then(|mut outcomes| {
                        outcomes
                            .pop()
                            .ok_or_else(|| StoreError::Corrupt("a plan without an outcome".into()))
                    });
                if let Ok(outcome) = &outcome {
                    record(&job.proposal.request, outcome);
                }
                let _ = job.reply.send(outcome);
            }
        }
        Err(error) => {
            let code = bank_kit::DomainError::code(&error);
            for job in group {
                metrics::counter!(
                    "ledger_postings_refused_total",
                    "kind" => job.proposal.request.kind_name(),
                    "code" => code.as_str(),
                )
                .increment(1);
                let _ = job.reply.send(Err(clone_error(&error)));
            }
        }
    }
}

/// How often the hold sweep writes the expiry of holds whose time is up.
pub const HOLD_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Starts the task that writes the expiry of holds whose time is up on books no
/// posting touches (a posting releases its own books' due holds itself). The
/// first pass after a start looks at every hold.
pub fn start_hold_sweep(store: Arc<LedgerStore>, interval: Duration) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match store.expire_due_holds().await {
                Ok(0) => {}
                Ok(released) => {
                    metrics::counter!("ledger_holds_expired_total").increment(released as u64);
                    tracing::info!(released, "expired holds released");
                }
                Err(error) => tracing::warn!(error = %error, "hold sweep failed; trying again"),
            }
        }
    });
}

/// How often the background verification reads the whole journal again rather
/// than only what came since its previous round: entries already verified are
/// append-only, but a full pass also catches a row changed behind the ledger's
/// back.
pub const VERIFY_FULL_EVERY: Duration = Duration::from_secs(3_600);

/// Starts the ledger's continuous self-check: every `interval`, the entries
/// each book gained since the last round (and all of them at start and every
/// [`VERIFY_FULL_EVERY`]), with every hold check. `ledger_verify_mismatches`
/// holds the latest round's count; `ledger_verify_last_success_timestamp_seconds`
/// the end of the latest round that found none.
pub fn start_verifier(store: Arc<LedgerStore>, interval: Duration) {
    tokio::spawn(async move {
        let mut checkpoint = crate::store::VerifyCheckpoint::default();
        let mut last_full: Option<Instant> = None;
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let full = last_full.is_none_or(|at| at.elapsed() >= VERIFY_FULL_EVERY);
            let scope = if full {
                crate::store::VerifyScope::Full
            } else {
                crate::store::VerifyScope::SinceCheckpoint
            };
            let started = Instant::now();
            match store.verify_with(&mut checkpoint, scope).await {
                Ok(report) => {
                    let scope_label = if full { "full" } else { "incremental" };
                    metrics::histogram!("ledger_verify_seconds", "scope" => scope_label)
                        .record(started.elapsed().as_secs_f64());
                    metrics::counter!("ledger_verify_entries_checked_total")
                        .increment(u64::try_from(report.entries_checked).unwrap_or(0));
                    metrics::gauge!("ledger_verify_mismatches").set(report.mismatches.len() as f64);
                    if full {
                        last_full = Some(started);
                    }
                    if let Some(first) = report.mismatches.first() {
                        tracing::error!(
                            mismatches = report.mismatches.len(),
                            kind = first.kind,
                            account_id = %first.account_id,
                            detail = %first.detail,
                            "ledger verification found mismatches"
                        );
                    } else {
                        let now = bank_kit::time::now().timestamp_micros() as f64 / 1e6;
                        metrics::gauge!("ledger_verify_last_success_timestamp_seconds").set(now);
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %error, "ledger verification failed; trying again")
                }
            }
        }
    });
}

/// Runs a group's transaction in a task of its own, so that nothing the writer
/// or a caller does can drop it half-way, and a panic in it is an error for its
/// group rather than the end of the writer.
async fn run_detached(
    store: &Arc<LedgerStore>,
    proposals: Vec<Proposal>,
    span: tracing::Span,
) -> Result<Vec<Outcome>, StoreError> {
    use tracing::Instrument;
    let store = Arc::clone(store);
    tokio::spawn(async move { store.commit_group(&proposals).await }.instrument(span))
        .await
        .map_err(|error| StoreError::WriterStopped(error.to_string()))?
}

/// The same failure, with the same code, for every caller of a group.
fn clone_error(error: &StoreError) -> StoreError {
    match error {
        StoreError::Busy => StoreError::Busy,
        StoreError::Refused(refusal) => StoreError::Refused(refusal.clone()),
        other if bank_kit::DomainError::code(other) == ErrorCode::Unavailable => {
            StoreError::Unavailable(other.to_string())
        }
        other => StoreError::WriterStopped(other.to_string()),
    }
}

/// Business counters of the ledger: postings committed (a replay of an
/// idempotency key is not a new one) with the minor units they moved, and
/// postings refused, by kind and the refusal's error code.
fn record(request: &PostingRequest, outcome: &Outcome) {
    let kind = request.kind_name();
    match (&outcome.result, outcome.replayed) {
        (_, true) => {
            metrics::counter!("ledger_posting_replays_total", "kind" => kind).increment(1);
        }
        (Ok(transfers), false) => {
            for transfer in transfers {
                let labels = [
                    ("kind", kind.to_owned()),
                    ("currency", transfer.currency.as_str().to_owned()),
                ];
                metrics::counter!("ledger_postings_total", &labels).increment(1);
                // Never negative, so the cast cannot wrap.
                metrics::counter!("ledger_posted_minor_units_total", &labels)
                    .increment(transfer.amount_minor.unsigned_abs());
            }
        }
        (Err(refusal), false) => {
            metrics::counter!(
                "ledger_postings_refused_total",
                "kind" => kind,
                "code" => refusal.code.as_str(),
            )
            .increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_caller_of_a_failed_group_gets_its_failures_code() {
        use bank_kit::DomainError;
        let unreachable = StoreError::Database(sea_orm::DbErr::ConnectionAcquire(
            sea_orm::ConnAcquireErr::Timeout,
        ));
        let internal = StoreError::Corrupt("row".into());

        assert_eq!(clone_error(&unreachable).code(), ErrorCode::Unavailable);
        assert_eq!(clone_error(&StoreError::Busy).code(), ErrorCode::Conflict);
        assert_eq!(clone_error(&internal).code(), ErrorCode::Internal);
    }
}
