//! Least privilege in PostgreSQL: the schema's owner migrates, each service runs
//! as a role that can read and append its journal but never change the schema,
//! disable a trigger or rewrite history.

use bank_e2e::{Parts, roles::RoleCluster, spawn_with_owners};
use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, Database};
use serde_json::json;

use crate::helpers::Rest;

/// PostgreSQL only: SQLite has no roles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs BANK_TEST_POSTGRES_URL; make test runs it when that is set"]
async fn services_run_as_roles_that_cannot_rewrite_history_on_postgresql() {
    let Some(admin_url) = bank_kit::testing::postgres_server_or_skip() else {
        return;
    };
    assert!(
        admin_url.contains("postgres@"),
        "the test names its roles in place of the admin URL's user `postgres`"
    );
    let cluster = RoleCluster::create(&admin_url, 3).await;
    let service_urls = cluster.urls(&cluster.service);
    let owner_urls = cluster.urls(&cluster.owner);
    let outcome = tokio::spawn(async move {
        let stack = spawn_with_owners(&service_urls, Some(&owner_urls), Parts::ALL).await;
        let rest = Rest::new(&stack);

        // Everything a customer and an operator do works as the restricted roles.
        let operator = rest.operator_token().await;
        let (_, token) = rest.customer().await;
        let from = rest.open_account(&token, "EUR").await;
        let to = rest.open_account(&token, "EUR").await;
        rest.deposit(&operator, &from, 1_000).await;
        let moved = rest
            .post(
                "/v1/transfers",
                Some(&token),
                Some("roles-1"),
                json!({"from_account_id": from, "to_account_id": to, "amount": 300, "currency": "EUR"}),
            )
            .await;
        assert_eq!(moved.status, StatusCode::CREATED, "{:?}", moved.body);
        let frozen = rest
            .post(&format!("/v1/admin/accounts/{to}/freeze"), Some(&operator), None, json!({}))
            .await;
        assert_eq!(frozen.status, StatusCode::OK, "{:?}", frozen.body);

        // The ledger's own credentials cannot touch the schema or the history.
        let ledger = Database::connect(&service_urls[1]).await.unwrap();
        for statement in [
            "ALTER TABLE ledger_entries DISABLE TRIGGER ALL",
            "DROP TRIGGER ledger_entries_append_only ON ledger_entries",
            "ALTER TABLE ledger_accounts DROP CONSTRAINT ledger_accounts_check",
            "UPDATE ledger_entries SET amount_minor = 1",
            "DELETE FROM ledger_transfers",
            "DELETE FROM ledger_requests",
            "TRUNCATE ledger_entries",
            "DROP TABLE ledger_requests",
            "CREATE TABLE ledger_shadow (id BIGINT)",
            "SET session_replication_role = replica",
        ] {
            let refused = ledger.execute_unprepared(statement).await;
            assert!(refused.is_err(), "the ledger's role may {statement}");
        }
        // What it needs stays possible.
        ledger
            .execute_unprepared("SELECT count(*) FROM ledger_entries")
            .await
            .unwrap();
        ledger.close().await.ok();

        let account = Database::connect(&service_urls[2]).await.unwrap();
        for statement in ["DELETE FROM accounts", "DROP TABLE account_open_requests"] {
            assert!(
                account.execute_unprepared(statement).await.is_err(),
                "the account service's role may {statement}"
            );
        }
        account.close().await.ok();

        let verified = rest.get("/v1/admin/ledger/verify", &operator).await;
        assert_eq!(verified.body["ok"], true, "{:?}", verified.body);
    })
    .await;
    cluster.drop_all().await;
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}
