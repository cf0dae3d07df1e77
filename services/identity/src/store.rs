//! Identity's storage: users, sessions, refresh tokens and audit events. Every SQL
//! statement identity runs lives here.

pub mod migrations;

/// What identity's own role may do when it is not the schema's owner: no schema
/// changes; the audit trail is append-only; only throttle counters are ever
/// deleted (a success clears them).
pub const GRANTS: &[bank_kit::db::TableGrant] = &[
    bank_kit::db::TableGrant {
        table: "users",
        privileges: "SELECT, INSERT, UPDATE",
    },
    bank_kit::db::TableGrant {
        table: "sessions",
        privileges: "SELECT, INSERT, UPDATE",
    },
    bank_kit::db::TableGrant {
        table: "refresh_tokens",
        privileges: "SELECT, INSERT, UPDATE",
    },
    bank_kit::db::TableGrant {
        table: "login_throttle",
        privileges: "SELECT, INSERT, UPDATE, DELETE",
    },
    bank_kit::db::TableGrant {
        table: "audit_events",
        privileges: "SELECT, INSERT",
    },
    bank_kit::db::TableGrant {
        table: "revoked_sessions",
        privileges: "SELECT, INSERT",
    },
];

use chrono::{DateTime, Duration, Utc};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, QueryResult, Statement, TransactionTrait, Value,
};

use crate::domain::{Backoff, Email, IdentityError, Role, User};

/// A database error, as identity's domain sees it: the database could not be
/// reached (the caller may retry), or it failed otherwise.
impl From<sea_orm::DbErr> for IdentityError {
    fn from(error: sea_orm::DbErr) -> IdentityError {
        if bank_kit::db::is_unavailable(&error) {
            IdentityError::StorageUnavailable(error.to_string())
        } else {
            IdentityError::Storage(error.to_string())
        }
    }
}

const USER_COLUMNS: &str = "user_id, email, full_name, roles, enabled, created_at";

/// Every write transaction here starts with a write, so on SQLite it takes the
/// database's write lock (waiting out the busy timeout) before it reads anything
/// and can never fail to upgrade a read snapshot.
pub struct IdentityStore {
    db: DatabaseConnection,
}

/// Why a session stopped being usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeReason {
    Logout,
    PasswordChanged,
    UserDisabled,
    RolesChanged,
    RefreshTokenReused,
}

impl RevokeReason {
    fn as_str(self) -> &'static str {
        match self {
            RevokeReason::Logout => "logout",
            RevokeReason::PasswordChanged => "password_changed",
            RevokeReason::UserDisabled => "user_disabled",
            RevokeReason::RolesChanged => "roles_changed",
            RevokeReason::RefreshTokenReused => "refresh_token_reused",
        }
    }
}

/// Lifetimes of a session.
#[derive(Debug, Clone, Copy)]
pub struct SessionPolicy {
    /// A session not refreshed for this long is dead.
    pub idle_timeout: Duration,
    /// No session lives longer than this, however often it is refreshed.
    pub absolute_lifetime: Duration,
}

/// The outcome of counting a login attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// Counted: this many attempts without a success so far, this one included.
    Counted(i64),
    /// Refused: attempts are blocked for this long.
    Blocked(Duration),
}

/// What presenting a refresh token led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    Rotated {
        session_id: String,
        user_id: String,
    },
    /// The token had already been spent: the whole session is now revoked.
    ReuseDetected {
        session_id: String,
        user_id: String,
    },
    Invalid,
}

/// One page of the feed of ended sessions (see the `revoked_sessions` migration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationPage {
    /// Each session with the time it ended.
    pub sessions: Vec<(String, DateTime<Utc>)>,
    /// Position of the last session of the page (or the `after_seq` asked for).
    pub last_seq: i64,
    /// Whether the page ends the round.
    pub complete: bool,
    /// Where the next round starts, read before the page.
    pub horizon: i64,
}

impl IdentityStore {
    pub fn new(db: DatabaseConnection) -> IdentityStore {
        IdentityStore { db }
    }

    fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    pub async fn insert_user(&self, user: &User, password_hash: &str) -> Result<(), IdentityError> {
        let result = self
            .db
            .execute_raw(statement(
                self.backend(),
                "INSERT INTO users (user_id, email, full_name, password_hash, roles, enabled, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
                [
                    user.user_id.clone().into(),
                    user.email.as_str().into(),
                    user.full_name.clone().into(),
                    password_hash.into(),
                    roles_to_column(&user.roles).into(),
                    user.enabled.into(),
                    user.created_at.into(),
                ],
            ))
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(error) if bank_kit::db::is_unique_violation(&error) => {
                Err(IdentityError::EmailTaken)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// The user and their password hash.
    pub async fn user_by_email(
        &self,
        email: &Email,
    ) -> Result<Option<(User, String)>, IdentityError> {
        let row = self
            .db
            .query_one_raw(statement(
                self.backend(),
                &format!("SELECT {USER_COLUMNS}, password_hash FROM users WHERE email = $1"),
                [email.as_str().into()],
            ))
            .await?;
        match row {
            None => Ok(None),
            Some(row) => {
                let hash: String = row.try_get("", "password_hash")?;
                Ok(Some((user_from_row(&row)?, hash)))
            }
        }
    }

    pub async fn user_by_id(&self, user_id: &str) -> Result<Option<User>, IdentityError> {
        let row = self
            .db
            .query_one_raw(statement(
                self.backend(),
                &format!("SELECT {USER_COLUMNS} FROM users WHERE user_id = $1"),
                [user_id.into()],
            ))
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    pub async fn password_hash(&self, user_id: &str) -> Result<Option<String>, IdentityError> {
        let row = self
            .db
            .query_one_raw(statement(
                self.backend(),
                "SELECT password_hash FROM users WHERE user_id = $1",
                [user_id.into()],
            ))
            .await?;
        Ok(row
            .map(|row| row.try_get("", "password_hash"))
            .transpose()?)
    }

    pub async fn set_password_hash(&self, user_id: &str, hash: &str) -> Result<(), IdentityError> {
        self.db
            .execute_raw(statement(
                self.backend(),
                "UPDATE users SET password_hash = $1, updated_at = $2 WHERE user_id = $3",
                [hash.into(), bank_kit::time::now().into(), user_id.into()],
            ))
            .await?;
        Ok(())
    }

    pub async fn set_enabled(&self, user_id: &str, enabled: bool) -> Result<(), IdentityError> {
        self.db
            .execute_raw(statement(
                self.backend(),
                "UPDATE users SET enabled = $1, updated_at = $2 WHERE user_id = $3",
                [enabled.into(), bank_kit::time::now().into(), user_id.into()],
            ))
            .await?;
        Ok(())
    }

    /// Disables `user_id` and ends every session of theirs, in one transaction.
    pub async fn disable_user(&self, user_id: &str) -> Result<(), IdentityError> {
        let now = bank_kit::time::now();
        let txn = self.db.begin().await?;
        txn.execute_raw(statement(
            self.backend(),
            "UPDATE users SET enabled = $1, updated_at = $2 WHERE user_id = $3",
            [false.into(), now.into(), user_id.into()],
        ))
        .await?;
        revoke_sessions_of_user(&txn, user_id, None, RevokeReason::UserDisabled, now).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Sets the roles of `user_id`, unless that would leave no enabled operator:
    /// then nothing changes and the answer is false. A change ends the user's
    /// sessions. Role changes take turns
    /// (the update's write lock on SQLite, an advisory lock on PostgreSQL), so
    /// two operators demoting each other at once cannot both succeed.
    pub async fn set_roles(&self, user_id: &str, roles: &[Role]) -> Result<bool, IdentityError> {
        let txn = self.db.begin().await?;
        if self.backend() == DbBackend::Postgres {
            txn.execute_raw(statement(
                self.backend(),
                "SELECT pg_advisory_xact_lock($1)",
                [ROLE_CHANGE_LOCK_KEY.into()],
            ))
            .await?;
        }
        let now = bank_kit::time::now();
        let changed = txn
            .execute_raw(statement(
                self.backend(),
                "UPDATE users SET roles = $1, updated_at = $2 WHERE user_id = $3 AND roles <> $1",
                [roles_to_column(roles).into(), now.into(), user_id.into()],
            ))
            .await?
            .rows_affected()
            == 1;
        // Tokens carry roles: the ones issued with the old roles must stop
        // working, so the user's sessions end with the change.
        if changed {
            revoke_sessions_of_user(&txn, user_id, None, RevokeReason::RolesChanged, now).await?;
        }
        let operators = txn
            .query_all_raw(statement(
                self.backend(),
                "SELECT roles FROM users WHERE enabled = $1",
                [true.into()],
            ))
            .await?
            .iter()
            .map(|row| row.try_get::<String>("", "roles"))
            .collect::<Result<Vec<_>, _>>()?
            .iter()
            .filter(|column| {
                column
                    .split(',')
                    .any(|role| role == Role::Operator.as_str())
            })
            .count();
        if operators == 0 {
            txn.rollback().await.ok();
            return Ok(false);
        }
        txn.commit().await?;
        Ok(true)
    }

    /// Replaces the password hash `old` by `new` (a rehash with current
    /// parameters), unless the password was changed meanwhile. True if replaced.
    pub async fn replace_password_hash(
        &self,
        user_id: &str,
        old: &str,
        new: &str,
    ) -> Result<bool, IdentityError> {
        let result = self
            .db
            .execute_raw(statement(
                self.backend(),
                "UPDATE users SET password_hash = $1, updated_at = $2
                 WHERE user_id = $3 AND password_hash = $4",
                [
                    new.into(),
                    bank_kit::time::now().into(),
                    user_id.into(),
                    old.into(),
                ],
            ))
            .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Starts a session whose first refresh token has hash `token_hash`, if the
    /// user is still enabled and their password hash is still `verified_hash`,
    /// the one the password was checked against: a session must not outlive a
    /// password change, a disable or a bootstrap reset that raced the login.
    pub async fn create_session(
        &self,
        user_id: &str,
        verified_hash: &str,
        token_hash: &str,
        policy: SessionPolicy,
    ) -> Result<String, IdentityError> {
        let session_id = uuid::Uuid::new_v4().to_string();
        let now = bank_kit::time::now();
        // On PostgreSQL the user row is share-locked until commit: a concurrent
        // password change, disable or reset waits for this session to commit (and
        // then revokes it), or commits first, and the check no longer matches.
        // SQLite serialises writers anyway.
        let lock = match self.backend() {
            DbBackend::Postgres => " FOR SHARE",
            _ => "",
        };
        let txn = self.db.begin().await?;
        let created = txn
            .execute_raw(statement(
                self.backend(),
                &format!(
                    "INSERT INTO sessions (session_id, user_id, created_at, last_used_at, expires_at)
                     SELECT $1, $2, $3, $3, $4
                     WHERE EXISTS (SELECT 1 FROM users
                                   WHERE user_id = $2 AND password_hash = $5 AND enabled = $6{lock})"
                ),
                [
                    session_id.clone().into(),
                    user_id.into(),
                    now.into(),
                    (now + policy.absolute_lifetime).into(),
                    verified_hash.into(),
                    true.into(),
                ],
            ))
            .await?;
        if created.rows_affected() != 1 {
            txn.rollback().await?;
            return Err(IdentityError::InvalidCredentials);
        }
        txn.execute_raw(statement(
            self.backend(),
            "INSERT INTO refresh_tokens (token_hash, session_id, issued_at) VALUES ($1, $2, $3)",
            [token_hash.into(), session_id.clone().into(), now.into()],
        ))
        .await?;
        txn.commit().await?;
        Ok(session_id)
    }

    /// Spends the refresh token with hash `presented` and issues `replacement` in
    /// its place, if the token is live and its session is neither revoked, idle
    /// nor past its absolute lifetime. A spent token revokes its whole session.
    pub async fn rotate_refresh_token(
        &self,
        presented: &str,
        replacement: &str,
        policy: SessionPolicy,
    ) -> Result<Rotation, IdentityError> {
        let backend = self.backend();
        let now = bank_kit::time::now();
        let txn = self.db.begin().await?;
        // Spend first: the write takes the token's row lock (the database's write
        // lock on SQLite) before anything is read, so two presentations of one
        // token are strictly ordered and the second always sees it spent.
        let spent_now = txn
            .execute_raw(statement(
                backend,
                "UPDATE refresh_tokens SET spent_at = $1 WHERE token_hash = $2 AND spent_at IS NULL",
                [now.into(), presented.into()],
            ))
            .await?
            .rows_affected()
            == 1;
        // The session row is locked too, so a logout or disable running now either
        // finishes first (and is seen) or waits for this rotation.
        let lock = if backend == DbBackend::Postgres {
            " FOR UPDATE OF s"
        } else {
            ""
        };
        let row = txn
            .query_one_raw(statement(
                backend,
                &format!(
                    "SELECT t.session_id, s.user_id, s.last_used_at, s.expires_at, s.revoked_at
                     FROM refresh_tokens t JOIN sessions s ON s.session_id = t.session_id
                     WHERE t.token_hash = $1{lock}"
                ),
                [presented.into()],
            ))
            .await?;
        let Some(row) = row else {
            return Ok(Rotation::Invalid);
        };
        let session_id: String = row.try_get("", "session_id")?;
        let user_id: String = row.try_get("", "user_id")?;
        let last_used_at: DateTime<Utc> = row.try_get("", "last_used_at")?;
        let expires_at: DateTime<Utc> = row.try_get("", "expires_at")?;
        let revoked_at: Option<DateTime<Utc>> = row.try_get("", "revoked_at")?;
        if revoked_at.is_some() {
            return Ok(Rotation::Invalid);
        }
        if !spent_now {
            revoke_session(&txn, &session_id, RevokeReason::RefreshTokenReused, now).await?;
            txn.commit().await?;
            return Ok(Rotation::ReuseDetected {
                session_id,
                user_id,
            });
        }
        if now > expires_at || now > last_used_at + policy.idle_timeout {
            return Ok(Rotation::Invalid);
        }
        txn.execute_raw(statement(
            backend,
            "INSERT INTO refresh_tokens (token_hash, session_id, issued_at) VALUES ($1, $2, $3)",
            [replacement.into(), session_id.clone().into(), now.into()],
        ))
        .await?;
        txn.execute_raw(statement(
            backend,
            "UPDATE sessions SET last_used_at = $1 WHERE session_id = $2",
            [now.into(), session_id.clone().into()],
        ))
        .await?;
        txn.commit().await?;
        Ok(Rotation::Rotated {
            session_id,
            user_id,
        })
    }

    /// Revokes the session the refresh token belongs to, if it is `user_id`'s.
    /// Ends the session `session_id` of `user_id`.
    pub async fn revoke_session(
        &self,
        session_id: &str,
        user_id: &str,
    ) -> Result<(), IdentityError> {
        self.db
            .execute_raw(statement(
                self.backend(),
                "UPDATE sessions SET revoked_at = $1, revoked_reason = $2
                 WHERE revoked_at IS NULL AND user_id = $3 AND session_id = $4",
                [
                    bank_kit::time::now().into(),
                    RevokeReason::Logout.as_str().into(),
                    user_id.into(),
                    session_id.into(),
                ],
            ))
            .await?;
        Ok(())
    }

    pub async fn revoke_session_of_token(
        &self,
        token_hash: &str,
        user_id: &str,
    ) -> Result<(), IdentityError> {
        self.db
            .execute_raw(statement(
                self.backend(),
                "UPDATE sessions SET revoked_at = $1, revoked_reason = $2
                 WHERE revoked_at IS NULL AND user_id = $3
                   AND session_id = (SELECT session_id FROM refresh_tokens WHERE token_hash = $4)",
                [
                    bank_kit::time::now().into(),
                    RevokeReason::Logout.as_str().into(),
                    user_id.into(),
                    token_hash.into(),
                ],
            ))
            .await?;
        Ok(())
    }

    /// Revokes every live session of `user_id` except `keep`.
    pub async fn revoke_sessions_of_user(
        &self,
        user_id: &str,
        keep: Option<&str>,
        reason: RevokeReason,
    ) -> Result<u64, IdentityError> {
        revoke_sessions_of_user(&self.db, user_id, keep, reason, bank_kit::time::now()).await
    }

    /// The sessions ended from `horizon` on (0: all), after position
    /// `after_seq`, that ended after `since`, at most `limit` of them. The
    /// horizon for the next round is read first, so a session that ends while
    /// the page is read is either in it or after that horizon.
    pub async fn revoked_sessions(
        &self,
        horizon: i64,
        after_seq: i64,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<RevocationPage, IdentityError> {
        let backend = self.backend();
        let (horizon_sql, page_sql) = match backend {
            DbBackend::Postgres => (
                "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS horizon",
                "SELECT seq, session_id, revoked_at FROM revoked_sessions
                 WHERE txid >= $1 AND seq > $2 AND revoked_at > $3
                 ORDER BY seq LIMIT $4",
            ),
            _ => (
                "SELECT COALESCE(MAX(seq), 0) + 1 AS horizon FROM revoked_sessions",
                "SELECT seq, session_id, revoked_at FROM revoked_sessions
                 WHERE seq >= $1 AND seq > $2 AND revoked_at > $3
                 ORDER BY seq LIMIT $4",
            ),
        };
        let next_horizon: i64 = self
            .db
            .query_one_raw(Statement::from_string(backend, horizon_sql))
            .await?
            .ok_or_else(|| IdentityError::Corrupt("revocation horizon".into()))?
            .try_get("", "horizon")?;
        let rows = self
            .db
            .query_all_raw(statement(
                backend,
                page_sql,
                [
                    horizon.into(),
                    after_seq.into(),
                    since.into(),
                    i64::from(limit).into(),
                ],
            ))
            .await?;
        let mut last_seq = after_seq;
        let mut sessions = Vec::with_capacity(rows.len());
        for row in &rows {
            last_seq = row.try_get("", "seq")?;
            sessions.push((
                row.try_get("", "session_id")?,
                row.try_get("", "revoked_at")?,
            ));
        }
        Ok(RevocationPage {
            complete: sessions.len() < limit as usize,
            sessions,
            last_seq,
            horizon: next_horizon,
        })
    }

    /// Counts a login attempt under `key` before it is checked, so that parallel
    /// guesses cannot all slip past the count; a success clears it again. When
    /// `respect_block` is set, an attempt during a backoff is refused without
    /// being counted. A count idle for a day starts again.
    pub async fn reserve_login_attempt(
        &self,
        key: &str,
        backoff: Backoff,
        respect_block: bool,
    ) -> Result<Reservation, IdentityError> {
        let now = bank_kit::time::now();
        // A client that does not have to respect the block (a fresh one, on the
        // account's key) still does past the lockout threshold.
        let guard = match (respect_block, backoff.lockout_after) {
            (true, _) => {
                "WHERE login_throttle.blocked_until IS NULL OR login_throttle.blocked_until <= $2"
                    .to_owned()
            }
            (false, Some(threshold)) => format!(
                "WHERE login_throttle.failures < {threshold}
                   OR login_throttle.blocked_until IS NULL OR login_throttle.blocked_until <= $2"
            ),
            (false, None) => String::new(),
        };
        // One transaction whose first statement writes: it holds the row (the
        // file on SQLite) from the count to the block, so a parallel attempt sees
        // the block its predecessor set.
        let txn = self.db.begin().await?;
        let row = txn
            .query_one_raw(statement(
                self.backend(),
                &format!(
                    "INSERT INTO login_throttle (throttle_key, failures, blocked_until, updated_at)
                     VALUES ($1, 1, NULL, $2)
                     ON CONFLICT (throttle_key) DO UPDATE SET
                       failures = CASE WHEN login_throttle.updated_at < $3 THEN 1
                                       ELSE login_throttle.failures + 1 END,
                       updated_at = $2
                     {guard}
                     RETURNING failures"
                ),
                [key.into(), now.into(), (now - Duration::days(1)).into()],
            ))
            .await?;
        let Some(row) = row else {
            let blocked_until: Option<DateTime<Utc>> = txn
                .query_one_raw(statement(
                    self.backend(),
                    "SELECT blocked_until FROM login_throttle WHERE throttle_key = $1",
                    [key.into()],
                ))
                .await?
                .map(|row| row.try_get("", "blocked_until"))
                .transpose()?
                .flatten();
            txn.commit().await?;
            let wait = blocked_until.map_or(Duration::seconds(1), |until| until - now);
            return Ok(Reservation::Blocked(wait.max(Duration::seconds(1))));
        };
        let failures: i64 = row.try_get("", "failures")?;
        if let Some(delay) = backoff.delay_after(failures) {
            // A block that is still running is not pushed further out: attempts
            // that do not respect it (a fresh client's) must not extend it for
            // the clients that do.
            txn.execute_raw(statement(
                self.backend(),
                "UPDATE login_throttle SET blocked_until = $1
                 WHERE throttle_key = $2 AND (blocked_until IS NULL OR blocked_until <= $3)",
                [(now + delay).into(), key.into(), now.into()],
            ))
            .await?;
        }
        txn.commit().await?;
        Ok(Reservation::Counted(failures))
    }

    pub async fn clear_login_failures(&self, keys: &[&str]) -> Result<(), IdentityError> {
        for key in keys {
            self.db
                .execute_raw(statement(
                    self.backend(),
                    "DELETE FROM login_throttle WHERE throttle_key = $1",
                    [(*key).into()],
                ))
                .await?;
        }
        Ok(())
    }

    /// Appends to the audit trail. Details never contain secrets.
    pub async fn audit(
        &self,
        kind: &str,
        user_id: Option<&str>,
        detail: &str,
    ) -> Result<(), IdentityError> {
        self.db
            .execute_raw(statement(
                self.backend(),
                "INSERT INTO audit_events (event_id, occurred_at, kind, user_id, detail) VALUES ($1, $2, $3, $4, $5)",
                [
                    uuid::Uuid::now_v7().to_string().into(),
                    bank_kit::time::now().into(),
                    kind.into(),
                    user_id.map(str::to_owned).into(),
                    detail.into(),
                ],
            ))
            .await?;
        Ok(())
    }

    /// The kinds of the audit events recorded for `user_id`, oldest first.
    pub async fn audit_kinds(&self, user_id: &str) -> Result<Vec<String>, IdentityError> {
        let rows = self
            .db
            .query_all_raw(statement(
                self.backend(),
                "SELECT kind FROM audit_events WHERE user_id = $1 ORDER BY occurred_at, event_id",
                [user_id.into()],
            ))
            .await?;
        rows.iter()
            .map(|row| row.try_get("", "kind").map_err(IdentityError::from))
            .collect()
    }
}

async fn revoke_session(
    db: &impl ConnectionTrait,
    session_id: &str,
    reason: RevokeReason,
    now: DateTime<Utc>,
) -> Result<(), IdentityError> {
    db.execute_raw(statement(
        db.get_database_backend(),
        "UPDATE sessions SET revoked_at = $1, revoked_reason = $2 WHERE session_id = $3 AND revoked_at IS NULL",
        [now.into(), reason.as_str().into(), session_id.into()],
    ))
    .await?;
    Ok(())
}

async fn revoke_sessions_of_user(
    db: &impl ConnectionTrait,
    user_id: &str,
    keep: Option<&str>,
    reason: RevokeReason,
    now: DateTime<Utc>,
) -> Result<u64, IdentityError> {
    let result = db
        .execute_raw(statement(
            db.get_database_backend(),
            "UPDATE sessions SET revoked_at = $1, revoked_reason = $2
             WHERE revoked_at IS NULL AND user_id = $3 AND session_id <> $4",
            [
                now.into(),
                reason.as_str().into(),
                user_id.into(),
                keep.unwrap_or_default().into(),
            ],
        ))
        .await?;
    Ok(result.rows_affected())
}

fn statement<const N: usize>(backend: DbBackend, sql: &str, values: [Value; N]) -> Statement {
    Statement::from_sql_and_values(backend, sql, values)
}

/// Advisory lock key taken while changing roles ("bankrole" in ASCII).
const ROLE_CHANGE_LOCK_KEY: i64 = 0x62616e6b726f6c65;

fn roles_to_column(roles: &[Role]) -> String {
    roles
        .iter()
        .map(|role| role.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn user_from_row(row: &QueryResult) -> Result<User, IdentityError> {
    let email: String = row.try_get("", "email")?;
    let roles: String = row.try_get("", "roles")?;
    Ok(User {
        user_id: row.try_get("", "user_id")?,
        email: Email::parse(&email).map_err(|_| IdentityError::Corrupt("email".into()))?,
        full_name: row.try_get("", "full_name")?,
        roles: Role::parse_set(roles.split(','))
            .map_err(|_| IdentityError::Corrupt("roles".into()))?,
        enabled: row.try_get("", "enabled")?,
        created_at: row.try_get("", "created_at")?,
    })
}
