//! Rate limiting with GCRA (the generic cell rate algorithm): per client and per
//! class of route, a "theoretical arrival time" advances by one emission interval
//! per request, and a request is refused while that time is further ahead than the
//! burst allows. In process by default; in Redis when `REDIS_URL` is set, so that
//! every gateway replica shares the same buckets. If Redis stops answering, the
//! gateway falls back to its own in-process buckets rather than refusing everyone.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// How fast one client may call one class of routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub per_minute: u32,
    /// Requests allowed back to back before the rate applies.
    pub burst: u32,
}

impl Quota {
    /// `per_minute` sustained, with a burst of a tenth of that (at least one).
    pub fn per_minute(per_minute: u32) -> Quota {
        Quota {
            per_minute: per_minute.max(1),
            burst: (per_minute / 10).max(1),
        }
    }

    fn interval(self) -> Duration {
        Duration::from_secs(60) / self.per_minute.max(1)
    }

    fn tolerance(self) -> Duration {
        self.interval() * self.burst.saturating_sub(1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Limited { retry_after: Duration },
}

/// Buckets kept in this process.
#[derive(Default)]
pub struct LocalLimiter {
    arrivals: Mutex<HashMap<String, Instant>>,
}

/// Buckets kept in memory are forgotten once idle; this many trigger a sweep.
const SWEEP_THRESHOLD: usize = 100_000;

impl LocalLimiter {
    pub fn check_at(&self, key: &str, quota: Quota, now: Instant) -> Decision {
        let Ok(mut arrivals) = self.arrivals.lock() else {
            return Decision::Allowed;
        };
        if arrivals.len() > SWEEP_THRESHOLD {
            arrivals.retain(|_, tat| *tat > now);
        }
        let tat = arrivals.get(key).copied().unwrap_or(now).max(now);
        let allow_at = tat.checked_sub(quota.tolerance()).unwrap_or(now);
        if now < allow_at {
            return Decision::Limited {
                retry_after: allow_at - now,
            };
        }
        arrivals.insert(key.to_owned(), tat + quota.interval());
        Decision::Allowed
    }
}

/// The same algorithm as one atomic Redis script, on Redis' clock so replicas with
/// skewed clocks agree. Returns 0 when allowed, else milliseconds to wait.
const GCRA_SCRIPT: &str = r"
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allow_at = tat - tolerance
if now < allow_at then return allow_at - now end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now + 1000)
return 0
";

#[derive(Debug, thiserror::Error)]
#[error("cannot connect to Redis: {0}")]
pub struct RedisUnavailable(String);

#[derive(Clone)]
enum Backend {
    Local,
    Redis {
        connection: ConnectionManager,
        script: Arc<redis::Script>,
    },
}

/// Checks requests against quotas. Cheap to clone.
#[derive(Clone)]
pub struct RateLimiter {
    backend: Backend,
    local: Arc<LocalLimiter>,
    namespace: String,
}

impl RateLimiter {
    pub fn in_process() -> RateLimiter {
        RateLimiter {
            backend: Backend::Local,
            local: Arc::new(LocalLimiter::default()),
            namespace: String::new(),
        }
    }

    /// Connects to Redis at `url`, failing fast when it cannot. Keys are prefixed
    /// with `namespace`.
    /// A `rediss://` URL connects with TLS, verified against `tls.ca` when set
    /// (else the system's roots), presenting the process's certificate if it has
    /// one.
    pub async fn redis(
        url: &str,
        namespace: &str,
        tls: &bank_kit::tls::TlsSettings,
    ) -> Result<RateLimiter, RedisUnavailable> {
        let unavailable = |error: &dyn std::fmt::Display| RedisUnavailable(error.to_string());
        let client = match &tls.ca {
            Some(ca) if url.starts_with("rediss://") => {
                let read = |path: &std::path::Path| {
                    std::fs::read(path).map_err(|error| {
                        RedisUnavailable(format!("cannot read {}: {error}", path.display()))
                    })
                };
                let client_tls = match &tls.identity {
                    Some((cert, key)) => Some(redis::ClientTlsConfig {
                        client_cert: read(cert)?,
                        client_key: read(key)?,
                    }),
                    None => None,
                };
                let certificates = redis::TlsCertificates {
                    client_tls,
                    root_cert: Some(read(ca)?),
                };
                redis::Client::build_with_tls(url, certificates)
                    .map_err(|error| unavailable(&error))?
            }
            _ => redis::Client::open(url).map_err(|error| unavailable(&error))?,
        };
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(2)
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_millis(500)));
        let connection = tokio::time::timeout(
            Duration::from_secs(5),
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| RedisUnavailable("timed out".into()))?
        .map_err(|error| RedisUnavailable(error.to_string()))?;
        Ok(RateLimiter {
            backend: Backend::Redis {
                connection,
                script: Arc::new(redis::Script::new(GCRA_SCRIPT)),
            },
            local: Arc::new(LocalLimiter::default()),
            namespace: namespace.to_owned(),
        })
    }

    /// Checks `key` against `quota`. When Redis fails, the process's own buckets
    /// decide: a degraded limit beats refusing every client or none.
    pub async fn check(&self, key: &str, quota: Quota) -> Decision {
        match self.check_shared(key, quota).await {
            Ok(Some(decision)) => decision,
            Ok(None) => self.local.check_at(key, quota, Instant::now()),
            Err(error) => {
                tracing::warn!(%error, "Redis rate limiter unavailable, limiting in process");
                self.local.check_at(key, quota, Instant::now())
            }
        }
    }

    /// The decision of the shared (Redis) buckets; `None` when there are none.
    pub async fn check_shared(
        &self,
        key: &str,
        quota: Quota,
    ) -> Result<Option<Decision>, redis::RedisError> {
        let Backend::Redis { connection, script } = &self.backend else {
            return Ok(None);
        };
        let mut connection = connection.clone();
        let wait_ms: u64 = script
            .key(format!("{}:ratelimit:{key}", self.namespace))
            .arg(u64::try_from(quota.interval().as_millis()).unwrap_or(u64::MAX))
            .arg(u64::try_from(quota.tolerance().as_millis()).unwrap_or(u64::MAX))
            .invoke_async(&mut connection)
            .await?;
        Ok(Some(match wait_ms {
            0 => Decision::Allowed,
            wait_ms => Decision::Limited {
                retry_after: Duration::from_millis(wait_ms),
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_the_rate_applies() {
        let limiter = LocalLimiter::default();
        let quota = Quota {
            per_minute: 60,
            burst: 3,
        };
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check_at("client", quota, start), Decision::Allowed);
        }
        let Decision::Limited { retry_after } = limiter.check_at("client", quota, start) else {
            panic!("the fourth request in the same instant must be limited");
        };
        assert_eq!(retry_after, Duration::from_secs(1));
        assert_eq!(
            limiter.check_at("client", quota, start + Duration::from_secs(1)),
            Decision::Allowed
        );
    }

    #[test]
    fn clients_have_separate_buckets() {
        let limiter = LocalLimiter::default();
        let quota = Quota {
            per_minute: 1,
            burst: 1,
        };
        let now = Instant::now();
        assert_eq!(limiter.check_at("a", quota, now), Decision::Allowed);
        assert!(matches!(
            limiter.check_at("a", quota, now),
            Decision::Limited { .. }
        ));
        assert_eq!(limiter.check_at("b", quota, now), Decision::Allowed);
    }

    #[test]
    fn quotas_derive_a_burst_of_a_tenth() {
        assert_eq!(Quota::per_minute(600).burst, 60);
        assert_eq!(Quota::per_minute(5).burst, 1);
        assert_eq!(Quota::per_minute(0).per_minute, 1);
    }
}
