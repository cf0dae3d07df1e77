//! PostgreSQL roles and databases made for one test: a schema owner and a
//! restricted service role, as production runs them.

use sea_orm::{ConnectionTrait, Database};

/// Roles and databases made for one test, removed again afterwards.
pub struct RoleCluster {
    admin_url: String,
    /// The role that owns the databases and runs the migrations.
    pub owner: String,
    /// The restricted role a service runs as.
    pub service: String,
    databases: Vec<String>,
}

impl RoleCluster {
    /// `count` databases owned by a new owner role, reachable by a new service
    /// role, on the server of `admin_url` (whose user must be `postgres`).
    pub async fn create(admin_url: &str, count: usize) -> RoleCluster {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let cluster = RoleCluster {
            admin_url: admin_url.to_owned(),
            owner: format!("bank_owner_{suffix}"),
            service: format!("bank_service_{suffix}"),
            databases: (0..count)
                .map(|index| format!("bank_roles_{index}_{suffix}"))
                .collect(),
        };
        let admin = Database::connect(admin_url).await.unwrap();
        let mut statements = vec![
            format!("CREATE ROLE {} LOGIN", cluster.owner),
            format!("CREATE ROLE {} LOGIN", cluster.service),
        ];
        for database in &cluster.databases {
            statements.push(format!(
                "CREATE DATABASE {database} OWNER {}",
                cluster.owner
            ));
            statements.push(format!("REVOKE ALL ON DATABASE {database} FROM PUBLIC"));
            statements.push(format!(
                "GRANT CONNECT ON DATABASE {database} TO {}, {}",
                cluster.owner, cluster.service
            ));
        }
        for statement in statements {
            admin.execute_unprepared(&statement).await.unwrap();
        }
        admin.close().await.ok();
        cluster
    }

    /// Each database's URL as `role`.
    pub fn urls(&self, role: &str) -> Vec<String> {
        self.databases
            .iter()
            .map(|database| {
                bank_kit::testing::replace_database_name(&self.admin_url, database).replacen(
                    "postgres@",
                    &format!("{role}@"),
                    1,
                )
            })
            .collect()
    }

    /// Drops the databases and both roles.
    pub async fn drop_all(self) {
        let Ok(admin) = Database::connect(&self.admin_url).await else {
            return;
        };
        for database in &self.databases {
            admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
                .await
                .ok();
        }
        for role in [&self.owner, &self.service] {
            admin
                .execute_unprepared(&format!("DROP ROLE IF EXISTS {role}"))
                .await
                .ok();
        }
        admin.close().await.ok();
    }
}
