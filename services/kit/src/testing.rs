//! Test support shared by every crate's integration tests: each test gets fresh
//! databases of its own, on SQLite always and on PostgreSQL when
//! `BANK_TEST_POSTGRES_URL` is set. A set but unreachable server fails the test.

use std::future::Future;

use sea_orm::{ConnectionTrait, Database};

/// Environment variable naming the PostgreSQL server tests may create databases on.
pub const POSTGRES_URL_VAR: &str = "BANK_TEST_POSTGRES_URL";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

enum Cleanup {
    Directory(#[allow(dead_code)] tempfile::TempDir),
    Postgres { admin_url: String, name: String },
}

/// Fresh databases that are removed again when the test ends.
struct TestDatabases {
    urls: Vec<String>,
    cleanups: Vec<Cleanup>,
}

impl TestDatabases {
    async fn create(backend: Backend, count: usize) -> Option<TestDatabases> {
        let mut databases = TestDatabases {
            urls: Vec::new(),
            cleanups: Vec::new(),
        };
        match backend {
            Backend::Sqlite => {
                let directory =
                    tempfile::tempdir().unwrap_or_else(|error| panic!("tempdir: {error}"));
                for index in 0..count {
                    let path = directory.path().join(format!("db{index}.sqlite"));
                    databases
                        .urls
                        .push(format!("sqlite://{}?mode=rwc", path.display()));
                }
                databases.cleanups.push(Cleanup::Directory(directory));
            }
            Backend::Postgres => {
                let admin_url = std::env::var(POSTGRES_URL_VAR)
                    .ok()
                    .filter(|url| !url.is_empty())?;
                let admin = Database::connect(&admin_url).await.unwrap_or_else(|error| {
                    panic!("{POSTGRES_URL_VAR} is set but the server is unreachable: {error}")
                });
                for _ in 0..count {
                    let name = format!("bank_test_{}", uuid::Uuid::new_v4().simple());
                    admin
                        .execute_unprepared(&format!("CREATE DATABASE {name}"))
                        .await
                        .unwrap_or_else(|error| panic!("create test database: {error}"));
                    databases
                        .urls
                        .push(replace_database_name(&admin_url, &name));
                    databases.cleanups.push(Cleanup::Postgres {
                        admin_url: admin_url.clone(),
                        name,
                    });
                }
                admin.close().await.ok();
            }
        }
        Some(databases)
    }

    async fn drop_all(self) {
        for cleanup in self.cleanups {
            if let Cleanup::Postgres { admin_url, name } = cleanup
                && let Ok(admin) = Database::connect(&admin_url).await
            {
                let statement = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                if let Err(error) = admin.execute_unprepared(&statement).await {
                    eprintln!("could not drop test database {name}: {error}");
                }
                admin.close().await.ok();
            }
        }
    }
}

/// The PostgreSQL server of [`POSTGRES_URL_VAR`], for a test that needs one
/// beyond a fresh database (roles, a database taken away). When it is not set the
/// test says it is skipped and should return.
pub fn postgres_server_or_skip() -> Option<String> {
    let url = std::env::var(POSTGRES_URL_VAR)
        .ok()
        .filter(|url| !url.is_empty());
    if url.is_none() {
        eprintln!("skipped: {POSTGRES_URL_VAR} is not set");
    }
    url
}

/// `url` with its database name replaced by `name`, credentials and query kept.
pub fn replace_database_name(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_end = base.find("://").map_or(0, |index| index + 3);
    let without_path = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{without_path}/{name}?{query}"),
        None => format!("{without_path}/{name}"),
    }
}

/// Runs `scenario` with `count` fresh database URLs of `backend`, then removes the
/// databases, also when the scenario panics. On PostgreSQL without
/// `BANK_TEST_POSTGRES_URL` it reports that the variant did not run and returns.
pub async fn run_with_databases<F, Fut>(backend: Backend, count: usize, scenario: F)
where
    F: FnOnce(Vec<String>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(databases) = TestDatabases::create(backend, count).await else {
        eprintln!("{POSTGRES_URL_VAR} is not set: PostgreSQL variant not run");
        return;
    };
    let outcome = tokio::spawn(scenario(databases.urls.clone())).await;
    databases.drop_all().await;
    if let Err(error) = outcome {
        match error.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(error) => panic!("test task failed: {error}"),
        }
    }
}

/// Declares a test that runs `scenario` once on SQLite and once on PostgreSQL, as
/// `name::sqlite` and `name::postgres`. `scenario` takes the database URLs.
#[macro_export]
macro_rules! db_test {
    ($name:ident, databases = $count:expr, $scenario:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $crate::testing::run_with_databases(
                    $crate::testing::Backend::Sqlite,
                    $count,
                    super::$scenario,
                )
                .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = "needs BANK_TEST_POSTGRES_URL; make test runs it when that is set"]
            async fn postgres() {
                $crate::testing::run_with_databases(
                    $crate::testing::Backend::Postgres,
                    $count,
                    super::$scenario,
                )
                .await;
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::replace_database_name;

    #[test]
    fn database_name_is_replaced_keeping_credentials_and_query() {
        assert_eq!(
            replace_database_name("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(
            replace_database_name("postgres://u:p@h/db?sslmode=disable", "t2"),
            "postgres://u:p@h/t2?sslmode=disable"
        );
        assert_eq!(
            replace_database_name("postgres://h:5432", "t3"),
            "postgres://h:5432/t3"
        );
    }
}
