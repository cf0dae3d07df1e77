//! The journal's integrity: append-only storage, verification, history paging.

use bank_e2e::{Parts, authed, db_test, spawn};
use bank_proto::ledger::v1 as pb;
use sea_orm::ConnectionTrait;

use crate::helpers::{deposit, open_book, transfer, transfer_request, verify};

db_test!(
    journal_rows_cannot_be_updated_or_deleted,
    databases = 2,
    journal_is_append_only
);
async fn journal_is_append_only(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::LEDGER).await;
    let operator = stack.operator().await;
    let alice = stack.customer().await;
    let account = open_book(&stack, &alice, "EUR").await;
    deposit(&stack, &operator, &account, 1_000).await;
    let db = bank_kit::db::connect(&stack.database_urls["ledger"])
        .await
        .unwrap();

    for statement in [
        "UPDATE ledger_entries SET amount_minor = 999999",
        "DELETE FROM ledger_entries",
        "UPDATE ledger_transfers SET amount_minor = 1",
        "DELETE FROM ledger_transfers",
    ] {
        let refused = db.execute_unprepared(statement).await;
        assert!(refused.is_err(), "{statement} was allowed");
    }
    assert!(verify(&stack, &operator).await.ok);
}

db_test!(
    verification_reports_a_tampered_balance,
    databases = 2,
    verification_detects_tampering
);
async fn verification_detects_tampering(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::LEDGER).await;
    let operator = stack.operator().await;
    let alice = stack.customer().await;
    let account = open_book(&stack, &alice, "EUR").await;
    deposit(&stack, &operator, &account, 1_000).await;
    let db = bank_kit::db::connect(&stack.database_urls["ledger"])
        .await
        .unwrap();

    db.execute_unprepared(&format!(
        "UPDATE ledger_accounts SET balance_minor = 5000 WHERE account_id = '{account}'"
    ))
    .await
    .unwrap();

    let report = verify(&stack, &operator).await;
    assert!(!report.ok);
    assert!(
        report
            .mismatches
            .iter()
            .any(|m| m.account_id == account && m.kind == "balance"),
        "{:?}",
        report.mismatches
    );
}

db_test!(
    history_pages_are_newest_first_and_complete,
    databases = 2,
    history_paging
);
async fn history_paging(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::LEDGER).await;
    let operator = stack.operator().await;
    let alice = stack.customer().await;
    let from = open_book(&stack, &alice, "EUR").await;
    let to = open_book(&stack, &alice, "EUR").await;
    deposit(&stack, &operator, &from, 1_000).await;
    for index in 1..=5 {
        transfer(
            &stack,
            &alice,
            transfer_request(&from, &to, index, &format!("p-{index}")),
        )
        .await
        .unwrap();
    }

    let mut amounts = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = stack
            .ledger()
            .await
            .list_account_entries(authed(
                &alice.access_token,
                pb::ListAccountEntriesRequest {
                    account_id: to.clone(),
                    page_size: 2,
                    page_token: page_token.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        amounts.extend(page.entries.iter().map(|entry| entry.amount_minor));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }

    assert_eq!(amounts, vec![5, 4, 3, 2, 1]);
    assert_eq!(pages, 3);
    let bad_token = stack
        .ledger()
        .await
        .list_account_entries(authed(
            &alice.access_token,
            pb::ListAccountEntriesRequest {
                account_id: to.clone(),
                page_size: 2,
                page_token: "not-a-token".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_token.code(), tonic::Code::InvalidArgument);
}

/// Replicas starting together on one PostgreSQL database take turns migrating.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_migrate_once_on_postgres() {
    bank_kit::testing::run_with_databases(
        bank_kit::testing::Backend::Postgres,
        1,
        |urls| async move {
            let url = urls[0].clone();
            let starts: Vec<_> = (0..4)
                .map(|_| {
                    let url = url.clone();
                    tokio::spawn(async move {
                        bank_kit::db::connect_and_migrate::<
                                bank_ledger::store::migrations::Migrator,
                            >(&url)
                            .await
                    })
                })
                .collect();
            for start in starts {
                assert!(start.await.unwrap().is_ok(), "every replica starts");
            }
        },
    )
    .await;
}
