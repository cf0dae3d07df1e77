//! Schema of the ledger database. One migration per module, as sea-orm-migration
//! names migrations after their module.

use sea_orm::{ConnectionTrait, DbBackend, DbErr};
use sea_orm_migration::{MigrationTrait, MigratorTrait, SchemaManager};

mod m20261128_000001_create_journal;
mod m20261201_000001_request_records;
mod m20261202_000001_refuse_replace;
mod m20261202_000002_book_status_version;
mod m20261203_000001_holds_and_batches;
mod m20261204_000001_request_outcome_indexes;
mod m20261205_000001_set_based_references;
mod m20261207_000001_group_guard;
mod m20261207_000002_sparse_indexes;
mod m20261207_000003_entries_on_their_transfer;
mod m20261208_000001_fewer_journal_indexes;
mod m20261208_000002_sparse_batch_indexes_on_sqlite;

pub struct Migrator;

#[sea_orm_migration::async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261128_000001_create_journal::Migration),
            Box::new(m20261201_000001_request_records::Migration),
            Box::new(m20261202_000001_refuse_replace::Migration),
            Box::new(m20261202_000002_book_status_version::Migration),
            Box::new(m20261203_000001_holds_and_batches::Migration),
            Box::new(m20261204_000001_request_outcome_indexes::Migration),
            Box::new(m20261205_000001_set_based_references::Migration),
            Box::new(m20261207_000001_group_guard::Migration),
            Box::new(m20261207_000002_sparse_indexes::Migration),
            Box::new(m20261207_000003_entries_on_their_transfer::Migration),
            Box::new(m20261208_000001_fewer_journal_indexes::Migration),
            Box::new(m20261208_000002_sparse_batch_indexes_on_sqlite::Migration),
        ]
    }
}

/// Runs `statements` in order on a database of `backend`, and nothing on the
/// other: what a migration that concerns one backend does.
async fn run_on(
    manager: &SchemaManager<'_>,
    backend: DbBackend,
    statements: &[&str],
) -> Result<(), DbErr> {
    let db = manager.get_connection();
    if db.get_database_backend() == backend {
        for statement in statements {
            db.execute_unprepared(statement).await?;
        }
    }
    Ok(())
}
