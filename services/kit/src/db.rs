//! Database connection and migration for both backends: SQLite (embedded default,
//! WAL mode) and PostgreSQL (production).

use std::time::Duration;

use sea_orm::sqlx::postgres::PgPoolOptions;
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr,
    SqlxPostgresConnector, SqlxSqliteConnector,
};
use sea_orm_migration::MigratorTrait;

/// How long a pooled connection may sit idle before it is pinged on checkout.
pub const IDLE_BEFORE_PING: Duration = Duration::from_secs(1);

/// How many WAL frames a SQLite commit may leave before the committing
/// connection checkpoints them itself. The checkpointer task
/// ([`start_checkpointer`]) copies frames back long before, off the writer's
/// path; this threshold is the backstop that also lets the WAL start over from
/// its beginning under continuous writes (a commit's own checkpoint finds
/// nothing else writing, so it completes).
pub const SQLITE_AUTOCHECKPOINT_FRAMES: u32 = 4_000;

/// The size a SQLite WAL file is cut back to whenever it starts over: a long
/// read (a full verification) can make it grow while it lasts, and without a
/// limit the file kept that size for good.
pub const SQLITE_WAL_SIZE_LIMIT_BYTES: u64 = 64 * 1024 * 1024;

/// How often the checkpointer copies a SQLite WAL's committed frames back into
/// the database file.
pub const SQLITE_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

/// Opens a pool on `url`. For SQLite the parent directory of the file is created
/// (and, with `mode=rwc`, the file), both owner-only, the journal switched to
/// WAL so readers never block the writer, and a checkpointer task started.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    let is_sqlite = url.starts_with("sqlite:");
    if is_sqlite {
        create_sqlite_parent_dir(url)?;
    }
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(if is_sqlite { 8 } else { 16 })
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(10))
        // A connection handed out is pinged first only when it sat idle long
        // enough to have been dropped by the server or the network: a ping
        // on every checkout was one more round trip per transaction and per
        // read, the largest part of a lone posting's time after the commit.
        .test_before_acquire_if_idle_for(IDLE_BEFORE_PING)
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(|sqlite| {
            sqlite
                // Readers never block the writer, nor the writer readers. Set
                // on every connection as it opens: a connection of the pool
                // opened before a once-only switch had kept the old journal.
                .journal_mode(SqliteJournalMode::Wal)
                // What the driver defaults to, stated: a commit returns only
                // once the WAL is on disk.
                .synchronous(SqliteSynchronous::Full)
                // Statement journals and sorts stay in memory: a commit
                // group's multi-row statements each keep a statement journal,
                // and in a temporary file that was a write per page.
                .pragma("temp_store", "MEMORY")
                .pragma(
                    "wal_autocheckpoint",
                    SQLITE_AUTOCHECKPOINT_FRAMES.to_string(),
                )
                .pragma(
                    "journal_size_limit",
                    SQLITE_WAL_SIZE_LIMIT_BYTES.to_string(),
                )
        });
    let mut db = Database::connect(options).await?;
    db.set_metric_callback(trace_statement);
    if db.get_database_backend() == DbBackend::Sqlite {
        start_checkpointer(db.clone(), SQLITE_CHECKPOINT_INTERVAL);
    }
    Ok(db)
}

/// A pool of one connection to `db`'s database, for the process's writes.
///
/// On SQLite: SQLite empties a connection's page cache whenever another
/// connection has written since that connection's last transaction, so a writer
/// that took whichever connection of the pool was free read most of its pages
/// back from the file for every transaction; one connection that does every
/// write keeps its cache warm.
///
/// On PostgreSQL: every write runs in the same server backend, whose caches
/// (catalog, prepared statements and their plans, the trigger functions'
/// compiled code) stay warm; spread over the pool's connections, one write in
/// several ran on a backend whose caches had gone cold since its last.
///
/// It opens on first use, with `db`'s options (a connection idle for
/// [`IDLE_BEFORE_PING`] is pinged before it is handed out, as in `db`), and its
/// statements are traced like `db`'s. `None` for a database that is neither.
pub fn writer_connection(db: &DatabaseConnection) -> Option<DatabaseConnection> {
    writer_connection_with(db, &[])
}

/// [`writer_connection`], whose PostgreSQL session also starts with
/// `settings` (run-time parameters, as `SET name = value` would give them);
/// SQLite has none to take.
pub fn writer_connection_with(
    db: &DatabaseConnection,
    settings: &[(&str, &str)],
) -> Option<DatabaseConnection> {
    let mut writer = match db.get_database_backend() {
        DbBackend::Sqlite => {
            let options = db.get_sqlite_connection_pool().connect_options();
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(0)
                .acquire_timeout(Duration::from_secs(10))
                .idle_timeout(None)
                .max_lifetime(None)
                // A local file does not drop a connection: nothing to ping for.
                .test_before_acquire(false)
                .connect_lazy_with((*options).clone());
            SqlxSqliteConnector::from_sqlx_sqlite_pool(pool)
        }
        DbBackend::Postgres => {
            let options = db
                .get_postgres_connection_pool()
                .connect_options()
                .as_ref()
                .clone()
                .options(settings.iter().copied());
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .min_connections(0)
                .acquire_timeout(Duration::from_secs(10))
                .test_before_acquire(false)
                .before_acquire(|connection, meta| {
                    Box::pin(async move {
                        if meta.idle_for >= IDLE_BEFORE_PING {
                            sea_orm::sqlx::Connection::ping(connection).await?;
                        }
                        Ok(true)
                    })
                })
                .connect_lazy_with(options);
            SqlxPostgresConnector::from_sqlx_postgres_pool(pool)
        }
        _ => return None,
    };
    writer.set_metric_callback(trace_statement);
    Some(writer)
}

/// Starts the task that checkpoints `db`'s WAL every `interval` (see
/// [`checkpoint`]), so that copying committed pages back into the database file
/// runs beside the writer instead of inside its commits. It ends when the pool
/// is closed.
pub fn start_checkpointer(
    db: DatabaseConnection,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match checkpoint(&db).await {
                Ok(()) => {}
                Err(DbErr::ConnectionAcquire(sea_orm::ConnAcquireErr::ConnectionClosed)) => break,
                Err(error) => {
                    tracing::debug!(error = %error, "WAL checkpoint failed; trying again")
                }
            }
        }
    })
}

/// Copies the frames committed to a SQLite WAL back into the database file,
/// passively: it neither waits for nor blocks a reader or the writer, and
/// leaves whatever a reader still needs for a later pass.
pub async fn checkpoint(db: &DatabaseConnection) -> Result<(), DbErr> {
    db.execute_unprepared("PRAGMA wal_checkpoint(PASSIVE)")
        .await
        .map(drop)
}

/// How a PostgreSQL database orders and compares text by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collation {
    /// `libc` or `icu` (`datlocprovider`).
    pub provider: String,
    /// The C library locale's name (`datcollate`).
    pub name: String,
}

impl Collation {
    /// Whether text compares byte by byte (`memcmp`), without a locale's rules.
    pub fn is_bytewise(&self) -> bool {
        self.provider == "libc" && matches!(self.name.as_str(), "C" | "POSIX")
    }
}

/// The default collation of `db`'s database; `None` on SQLite, whose text
/// compares byte by byte unless a column says otherwise.
pub async fn collation(db: &DatabaseConnection) -> Result<Option<Collation>, DbErr> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(None);
    }
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            DbBackend::Postgres,
            "SELECT CASE datlocprovider WHEN 'i' THEN 'icu' ELSE 'libc' END AS provider,
                    datcollate AS name
             FROM pg_database WHERE datname = current_database()",
        ))
        .await?;
    row.map(|row| {
        Ok(Collation {
            provider: row.try_get("", "provider")?,
            name: row.try_get("", "name")?,
        })
    })
    .transpose()
}

/// Connects and applies every pending migration of `M`. On PostgreSQL, replicas
/// starting together take turns: a session-level advisory lock, held on a
/// connection of its own, serialises their migrations.
pub async fn connect_and_migrate<M: MigratorTrait>(url: &str) -> Result<DatabaseConnection, DbErr> {
    let db = connect(url).await?;
    if db.get_database_backend() != DbBackend::Postgres {
        // On one connection: each SQLite connection keeps its own copy of the
        // schema, and a migration whose statements went to several of the
        // pool's connections could meet one that had not yet seen a trigger
        // dropped by another ("trigger … already exists").
        match writer_connection(&db) {
            Some(migrator) => {
                let migrated = migrate_unless_ahead::<M>(&migrator).await;
                migrator.close().await.ok();
                migrated?;
            }
            None => migrate_unless_ahead::<M>(&db).await?,
        }
        return Ok(db);
    }
    // One connection that the pool never recycles, so the session holding the
    // lock lives until it is released.
    let mut lock_options = ConnectOptions::new(url.to_owned());
    lock_options
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    let lock = Database::connect(lock_options).await?;
    lock.execute_unprepared(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))
        .await?;
    let migrated = migrate_unless_ahead::<M>(&db).await;
    let unlocked = lock
        .query_one_raw(sea_orm::Statement::from_string(
            DbBackend::Postgres,
            format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY}) AS released"),
        ))
        .await;
    lock.close().await.ok();
    migrated?;
    let released = unlocked?
        .map(|row| row.try_get::<bool>("", "released"))
        .transpose()?;
    if released != Some(true) {
        return Err(DbErr::Custom(
            "the migration lock was lost while migrating".into(),
        ));
    }
    Ok(db)
}

/// How the database's schema compares with the migrations a binary carries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SchemaState {
    /// Migrations of this binary the database has not had.
    pub pending: Vec<String>,
    /// Migrations the database has had that this binary does not know: a newer
    /// release ran them.
    pub ahead: Vec<String>,
}

/// Reads which migrations the database has had (none when it has no
/// migration table yet).
pub async fn schema_state<M: MigratorTrait>(db: &DatabaseConnection) -> Result<SchemaState, DbErr> {
    let known: Vec<String> = M::migrations()
        .iter()
        .map(|migration| migration.name().to_owned())
        .collect();
    let exists = match db.get_database_backend() {
        DbBackend::Postgres => "SELECT to_regclass('seaql_migrations') IS NOT NULL AS present",
        _ => {
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'seaql_migrations') AS present"
        }
    };
    let present = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            exists,
        ))
        .await?
        .map(|row| row.try_get::<bool>("", "present"))
        .transpose()?
        .unwrap_or(false);
    let applied: Vec<String> = if present {
        db.query_all_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT version FROM seaql_migrations",
        ))
        .await?
        .iter()
        .map(|row| row.try_get::<String>("", "version"))
        .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    Ok(SchemaState {
        pending: known
            .iter()
            .filter(|name| !applied.contains(name))
            .cloned()
            .collect(),
        ahead: applied
            .iter()
            .filter(|name| !known.contains(name))
            .cloned()
            .collect(),
    })
}

/// Applies the pending migrations. A schema a newer release has already taken
/// further is left alone when nothing of this binary is missing from it:
/// migrations only expand the schema, so the previous release keeps working
/// during a rolling update (and may restart) while the new one runs.
async fn migrate_unless_ahead<M: MigratorTrait>(db: &DatabaseConnection) -> Result<(), DbErr> {
    let state = schema_state::<M>(db).await?;
    match (state.pending.is_empty(), state.ahead.is_empty()) {
        (true, _) => {
            if !state.ahead.is_empty() {
                tracing::warn!(
                    ahead = ?state.ahead,
                    "the schema is ahead of this release (a newer one migrated it); starting without migrating"
                );
            }
            Ok(())
        }
        (false, true) => M::up(db, None).await,
        (false, false) => Err(DbErr::Custom(format!(
            "the schema lacks this release's migrations {:?} but has a newer release's {:?}",
            state.pending, state.ahead
        ))),
    }
}

/// Every statement run inside a sampled trace becomes a CLIENT span of the
/// span that ran it, named and described as the OpenTelemetry conventions ask
/// (`db.system`, `db.operation.name`, `db.collection.name`). It is recorded when
/// the statement has ended: its start is the end less what it took. Statements
/// of background work outside any trace are not recorded.
fn trace_statement(info: &sea_orm::metric::Info<'_>) {
    trace_sql(
        info.statement.db_backend,
        &info.statement.sql,
        info.elapsed,
        info.failed,
    );
}

/// Records one statement as a client span of the current span's trace, as
/// `db.system`, `db.operation.name` and `db.collection.name` (the table), when
/// that trace is sampled. Every statement run through a pool of [`connect`] or
/// [`writer_connection`] is recorded this way; a statement run straight on a
/// driver connection calls it itself.
pub fn trace_sql(backend: DbBackend, sql: &str, elapsed: Duration, failed: bool) {
    use opentelemetry::{
        KeyValue,
        trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer},
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let parent = tracing::Span::current().context();
    if !parent.span().span_context().is_sampled() {
        return;
    }
    let (operation, collection) = describe_statement(sql);
    let system = db_system(backend);
    let end = std::time::SystemTime::now();
    let start = end.checked_sub(elapsed).unwrap_or(end);
    let name = match &collection {
        Some(collection) => format!("{operation} {collection}"),
        None => operation.clone(),
    };
    let mut attributes = vec![
        KeyValue::new("db.system", system),
        KeyValue::new("db.operation.name", operation),
    ];
    if let Some(collection) = collection {
        attributes.push(KeyValue::new("db.collection.name", collection));
    }
    let tracer = opentelemetry::global::tracer("bank");
    let mut span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Client)
        .with_start_time(start)
        .with_attributes(attributes)
        .start_with_context(&tracer, &parent);
    if failed {
        span.set_status(Status::error("the statement failed"));
    }
    span.end_with_timestamp(end);
}

/// The `db.system` of a backend, as the OpenTelemetry conventions name it.
fn db_system(backend: DbBackend) -> &'static str {
    match backend {
        DbBackend::Postgres => "postgresql",
        DbBackend::Sqlite => "sqlite",
        _ => "other_sql",
    }
}

/// The CLIENT span of a transaction's `COMMIT`, which sea-orm's statement
/// callback does not see (see [`trace_statement`] for the statements).
pub fn commit_span(backend: DbBackend) -> tracing::Span {
    tracing::info_span!(
        "db.commit",
        otel.name = "COMMIT",
        otel.kind = "client",
        db.system = db_system(backend),
        db.operation.name = "COMMIT",
    )
}

/// The operation (`SELECT`, `INSERT`, ...) and the table a statement names: the
/// first of its data-modifying keywords for a `WITH` statement, and the name
/// after `FROM`, `INTO` or `UPDATE`.
fn describe_statement(sql: &str) -> (String, Option<String>) {
    let words: Vec<&str> = sql.split_whitespace().collect();
    let upper = |word: &str| word.to_ascii_uppercase();
    let mut operation = words.first().map(|word| upper(word)).unwrap_or_default();
    if operation == "WITH" {
        operation = words
            .iter()
            .map(|word| upper(word.trim_start_matches('(')))
            .find(|word| matches!(word.as_str(), "INSERT" | "UPDATE" | "DELETE"))
            .unwrap_or(operation);
    }
    let keyword = match operation.as_str() {
        "INSERT" => "INTO",
        "UPDATE" => "UPDATE",
        _ => "FROM",
    };
    let collection = words
        .iter()
        .position(|word| upper(word) == keyword)
        .and_then(|index| words.get(index + 1))
        .map(|word| word.trim_matches(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|word| !word.is_empty())
        .map(str::to_owned);
    (operation, collection)
}

/// What a service's own database role may do with one of its tables. The role
/// that owns the schema runs the migrations; the service runs as a role granted
/// exactly these privileges, so its credentials can neither change the schema,
/// disable a trigger, nor rewrite what its grants leave out (the ledger's journal
/// is `SELECT, INSERT` only).
#[derive(Debug, Clone, Copy)]
pub struct TableGrant {
    pub table: &'static str,
    /// A privilege list as SQL writes it, e.g. `SELECT, INSERT`.
    pub privileges: &'static str,
}

/// The service's database, migrated, for the service whose variables start with
/// `prefix` (`LEDGER`: `LEDGER_DATABASE_URL`, `LEDGER_MIGRATION_DATABASE_URL`).
/// With `migration_url` (PostgreSQL only) the migrations run as that URL's role,
/// the schema's owner, which then grants the role of `url` exactly `grants` (and
/// the use of the schema's sequences), and the service's pool connects as the
/// role of `url`. Without it a schema that has had every migration of `M` is
/// used as it is (the `migrate` subcommand ran them), and one that lacks some is
/// migrated by the service's own role, as on SQLite, where there are no roles.
pub async fn open_service_database<M: MigratorTrait>(
    prefix: &str,
    url: &str,
    migration_url: Option<&str>,
    grants: &[TableGrant],
) -> anyhow::Result<DatabaseConnection> {
    use anyhow::Context;
    let Some(migration_url) = migration_url else {
        // Without the owner's URL: a schema the `migrate` subcommand (or an
        // earlier start) brought up to date needs nothing more; one that lacks
        // migrations is migrated with this URL, which must then be the owner's.
        let db = connect(url)
            .await
            .with_context(|| format!("{prefix}_DATABASE_URL: cannot open the database"))?;
        let state = schema_state::<M>(&db).await.with_context(|| {
            format!("{prefix}_DATABASE_URL: cannot read which migrations the database has had")
        })?;
        if state.pending.is_empty() {
            return Ok(db);
        }
        db.close().await.ok();
        return connect_and_migrate::<M>(url).await.with_context(|| {
            format!("{prefix}_DATABASE_URL: cannot open and migrate the database (a restricted role needs the `migrate` subcommand with {prefix}_MIGRATION_DATABASE_URL first)")
        });
    };
    migrate_service_database::<M>(prefix, url, Some(migration_url), grants).await?;
    connect(url)
        .await
        .with_context(|| format!("{prefix}_DATABASE_URL: cannot open the database"))
}

/// What the `migrate` subcommand does: applies the migrations, as the schema
/// owner of `migration_url` when there is one (then granting the service's role
/// of `url` exactly `grants`), else as `url`'s role.
pub async fn migrate_service_database<M: MigratorTrait>(
    prefix: &str,
    url: &str,
    migration_url: Option<&str>,
    grants: &[TableGrant],
) -> anyhow::Result<()> {
    use anyhow::Context;
    match migration_url {
        Some(migration_url) => migrate_as_owner::<M>(migration_url, url, grants)
            .await
            .with_context(|| {
                format!("{prefix}_MIGRATION_DATABASE_URL: cannot migrate the database and grant the service's role")
            }),
        None => connect_and_migrate::<M>(url)
            .await
            .map(drop)
            .with_context(|| format!("{prefix}_DATABASE_URL: cannot open and migrate the database")),
    }
}

/// Runs the migrations as the role of `migration_url` and grants the role of
/// `service_url` exactly `grants`.
pub async fn migrate_as_owner<M: MigratorTrait>(
    migration_url: &str,
    service_url: &str,
    grants: &[TableGrant],
) -> Result<(), DbErr> {
    let owner = connect_and_migrate::<M>(migration_url).await?;
    let granted = grant(&owner, &role_of(service_url)?, grants).await;
    owner.close().await.ok();
    granted
}

/// The login role a PostgreSQL URL connects as.
fn role_of(url: &str) -> Result<String, DbErr> {
    use sea_orm::sqlx::postgres::PgConnectOptions;
    let options: PgConnectOptions = url
        .parse()
        .map_err(|_| DbErr::Custom("not a PostgreSQL URL".into()))?;
    Ok(options.get_username().to_owned())
}

/// A PostgreSQL identifier, quoted.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

async fn grant(owner: &DatabaseConnection, role: &str, grants: &[TableGrant]) -> Result<(), DbErr> {
    let current = owner
        .query_one_raw(sea_orm::Statement::from_string(
            DbBackend::Postgres,
            "SELECT current_user AS name",
        ))
        .await?
        .map(|row| row.try_get::<String>("", "name"))
        .transpose()?;
    if current.as_deref() == Some(role) {
        tracing::warn!("the service connects as the schema's owner: its role is not restricted");
        return Ok(());
    }
    let role = quote_identifier(role);
    let mut statements = vec![format!("GRANT USAGE ON SCHEMA public TO {role}")];
    for TableGrant { table, privileges } in grants {
        // Exactly these: whatever the role held before is taken back first.
        statements.push(format!("REVOKE ALL ON {table} FROM {role}"));
        statements.push(format!("GRANT {privileges} ON {table} TO {role}"));
    }
    // To read which migrations the schema has had, so that it can start
    // without the schema owner's credentials once they ran.
    statements.push(format!("REVOKE ALL ON seaql_migrations FROM {role}"));
    statements.push(format!("GRANT SELECT ON seaql_migrations TO {role}"));
    statements.push(format!(
        "GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}"
    ));
    for statement in statements {
        owner.execute_unprepared(&statement).await?;
    }
    Ok(())
}

/// Advisory lock key taken while migrating ("bankmigr" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x62616e6b6d696772;

fn create_sqlite_parent_dir(url: &str) -> Result<(), DbErr> {
    let path = url
        .trim_start_matches("sqlite:")
        .trim_start_matches("//")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    let path = std::path::Path::new(path);
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
        && !parent.exists()
    {
        private_dir_builder()
            .create(parent)
            .map_err(|error| DbErr::Custom(format!("cannot create database directory: {error}")))?;
    }
    // Only where the URL asks for the file to be created (`mode=rwc`).
    let creates = url
        .split_once('?')
        .is_some_and(|(_, query)| query.split('&').any(|pair| pair == "mode=rwc"));
    if !creates {
        return Ok(());
    }
    create_private_file(path)
        .map_err(|error| DbErr::Custom(format!("cannot create the database file: {error}")))
}

/// Creates directories readable by the owner alone (0700), whatever the umask.
pub fn private_dir_builder() -> std::fs::DirBuilder {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
}

/// Creates `path` empty and readable by the owner alone (0600) if it does not
/// exist yet. SQLite gives its `-wal` and `-shm` files the database file's
/// permissions, so the whole database stays owner-only whatever the umask.
fn create_private_file(path: &std::path::Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(error),
    }
}

/// Whether an error is a transient conflict worth retrying the whole transaction
/// for: a serialization failure or deadlock (SQLSTATE 40001, 40P01, as PostgreSQL
/// and Postgres-compatible distributed engines report them) or a busy SQLite file
/// (SQLITE_BUSY and its extended codes). Decided by the database's error code,
/// never by message text.
pub fn is_retryable(error: &DbErr) -> bool {
    use sea_orm::{RuntimeErr, sqlx};
    let (DbErr::Exec(RuntimeErr::SqlxError(inner))
    | DbErr::Query(RuntimeErr::SqlxError(inner))
    | DbErr::Conn(RuntimeErr::SqlxError(inner))) = error
    else {
        return false;
    };
    let sqlx::Error::Database(database_error) = inner.as_ref() else {
        return false;
    };
    let Some(code) = database_error.code() else {
        return false;
    };
    match code.as_ref() {
        "40001" | "40P01" => true,
        // SQLite reports its (extended) result code as the code: 5 is SQLITE_BUSY,
        // 261 SQLITE_BUSY_RECOVERY, 517 SQLITE_BUSY_SNAPSHOT, 773 SQLITE_BUSY_TIMEOUT.
        sqlite_code => matches!(sqlite_code.parse::<u32>(), Ok(5 | 261 | 517 | 773)),
    }
}

/// Whether an error says the database could not be reached or went away, rather
/// than that a statement failed: no connection could be had, the connection
/// broke, or the server is shutting down, restarting or not yet accepting
/// connections (SQLSTATE class 08, 57P01 to 57P03). Such a request is answered
/// `unavailable` (retry later), never `internal`.
pub fn is_unavailable(error: &DbErr) -> bool {
    use sea_orm::{RuntimeErr, sqlx};
    let inner = match error {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => return true,
        DbErr::Exec(RuntimeErr::SqlxError(inner)) | DbErr::Query(RuntimeErr::SqlxError(inner)) => {
            inner
        }
        _ => return false,
    };
    match inner.as_ref() {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(database_error) => database_error.code().is_some_and(|code| {
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// Whether an error is a unique-constraint violation.
pub fn is_unique_violation(error: &DbErr) -> bool {
    matches!(
        error.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}

#[cfg(test)]
mod statement_tests {
    use super::describe_statement;

    #[test]
    fn statements_are_named_by_operation_and_table() {
        let named = |sql: &str| describe_statement(sql);
        assert_eq!(
            named("SELECT a FROM ledger_accounts WHERE x = $1"),
            ("SELECT".into(), Some("ledger_accounts".into()))
        );
        assert_eq!(
            named("INSERT INTO ledger_entries (a) SELECT value FROM json_each($1)"),
            ("INSERT".into(), Some("ledger_entries".into()))
        );
        assert_eq!(
            named("UPDATE ledger_accounts SET x = 1"),
            ("UPDATE".into(), Some("ledger_accounts".into()))
        );
        assert_eq!(
            named("WITH t AS (INSERT INTO ledger_transfers SELECT 1) SELECT 1"),
            ("INSERT".into(), Some("ledger_transfers".into()))
        );
        assert_eq!(named("BEGIN"), ("BEGIN".into(), None));
    }
}
