//! Timestamps as the services exchange them: RFC 3339 in UTC with microseconds.

use chrono::{DateTime, SecondsFormat, Utc};

/// Now, truncated to microseconds so that what is stored reads back identical on
/// every database backend.
pub fn now() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

pub fn to_rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}
