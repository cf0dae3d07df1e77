//! Schema of the account database, one migration per module.

use sea_orm_migration::{MigrationTrait, MigratorTrait};

mod m20261128_000001_create_accounts;
mod m20261202_000001_status_versions_and_open_requests;

pub struct Migrator;

#[sea_orm_migration::async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261128_000001_create_accounts::Migration),
            Box::new(m20261202_000001_status_versions_and_open_requests::Migration),
        ]
    }
}
