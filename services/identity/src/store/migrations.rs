//! Schema of the identity database, one migration per module.

use sea_orm_migration::{MigrationTrait, MigratorTrait};

mod m20261128_000001_create_users_and_sessions;
mod m20261128_000002_create_login_throttle;
mod m20261202_000001_revoked_sessions;

pub struct Migrator;

#[sea_orm_migration::async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261128_000001_create_users_and_sessions::Migration),
            Box::new(m20261128_000002_create_login_throttle::Migration),
            Box::new(m20261202_000001_revoked_sessions::Migration),
        ]
    }
}
