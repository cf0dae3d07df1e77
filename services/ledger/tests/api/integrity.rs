//! The journal's integrity: append-only storage, verification, history paging.

use bank_e2e::{Parts, authed, db_test, spawn};
use bank_proto::ledger::v1 as pb;
use sea_orm::{ConnectionTrait, TransactionTrait};

use crate::helpers::{
    World, deposit, open_book, tamper_with_balance, transfer, transfer_request, verify, world,
};

/// One journal table, with what a forger would write into it.
struct JournalTable {
    name: &'static str,
    key: &'static str,
    /// Every column, in the order the forgeries below list them.
    columns: &'static str,
    /// The same columns with one of them forged.
    forged_columns: &'static str,
    /// The forged assignment, for updates.
    forged_set: &'static str,
    /// True for a row that carries the forgery.
    is_forged: &'static str,
}

const JOURNAL_TABLES: [JournalTable; 3] = [
    JournalTable {
        name: "ledger_entries",
        key: "entry_id",
        columns: "entry_id, transfer_id, account_id, account_seq, amount_minor, balance_after_minor, currency, counterparty_account_id, description, prev_hash, entry_hash, created_at",
        forged_columns: "entry_id, transfer_id, account_id, account_seq, 999999, balance_after_minor, currency, counterparty_account_id, description, prev_hash, entry_hash, created_at",
        forged_set: "amount_minor = 999999",
        is_forged: "amount_minor = 999999",
    },
    JournalTable {
        name: "ledger_transfers",
        key: "transfer_id",
        columns: "transfer_id, kind, from_account_id, to_account_id, amount_minor, currency, description, reverses_transfer_id, status, initiated_by, created_at",
        forged_columns: "transfer_id, kind, from_account_id, to_account_id, amount_minor, currency, 'forged', reverses_transfer_id, status, initiated_by, created_at",
        forged_set: "description = 'forged'",
        is_forged: "description = 'forged'",
    },
    JournalTable {
        name: "ledger_requests",
        key: "scope, idempotency_key",
        columns: "scope, idempotency_key, request_hash, transfer_id, refusal_code, refusal_detail, created_at",
        forged_columns: "scope, idempotency_key, 'forged', transfer_id, refusal_code, refusal_detail, created_at",
        forged_set: "request_hash = 'forged'",
        is_forged: "request_hash = 'forged'",
    },
];

/// Every way SQL can change or remove a row, on one table.
fn rewrites(table: &JournalTable, backend: sea_orm::DbBackend) -> Vec<String> {
    let JournalTable {
        name,
        key,
        columns,
        forged_columns,
        forged_set,
        ..
    } = table;
    // One existing row, chosen by a WHERE clause (SQLite needs one before ON CONFLICT).
    let one_row = format!("WHERE ({key}) IN (SELECT {key} FROM {name} ORDER BY {key} LIMIT 1)");
    let mut statements = vec![
        format!("UPDATE {name} SET {forged_set}"),
        format!("DELETE FROM {name}"),
        format!(
            "INSERT INTO {name} ({columns}) SELECT {columns} FROM {name} {one_row}
             ON CONFLICT ({key}) DO UPDATE SET {forged_set}"
        ),
    ];
    match backend {
        sea_orm::DbBackend::Sqlite => statements.extend([
            format!("INSERT OR REPLACE INTO {name} ({columns}) SELECT {forged_columns} FROM {name} {one_row}"),
            format!("REPLACE INTO {name} ({columns}) SELECT {forged_columns} FROM {name} {one_row}"),
        ]),
        _ => statements.extend([
            format!("TRUNCATE {name}"),
            format!("TRUNCATE {name} CASCADE"),
            format!(
                "MERGE INTO {name} AS target USING (SELECT {key} FROM {name} {one_row}) AS source
                 ON ({}) WHEN MATCHED THEN UPDATE SET {forged_set}",
                key.split(", ")
                    .map(|column| format!("target.{column} = source.{column}"))
                    .collect::<Vec<_>>()
                    .join(" AND ")
            ),
            format!(
                "MERGE INTO {name} AS target USING (SELECT {key} FROM {name} {one_row}) AS source
                 ON ({}) WHEN MATCHED THEN DELETE",
                key.split(", ")
                    .map(|column| format!("target.{column} = source.{column}"))
                    .collect::<Vec<_>>()
                    .join(" AND ")
            ),
        ]),
    }
    statements
}

/// Rows in `table`, and how many of them carry its forgery.
async fn census(db: &sea_orm::DatabaseConnection, table: &JournalTable) -> (i64, i64) {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            format!(
                "SELECT COUNT(*) AS total, COALESCE(SUM(CASE WHEN {} THEN 1 ELSE 0 END), 0) AS forged FROM {}",
                table.is_forged, table.name
            ),
        ))
        .await
        .unwrap()
        .unwrap();
    (
        row.try_get::<i64>("", "total").unwrap(),
        row.try_get::<i64>("", "forged").unwrap(),
    )
}

db_test!(
    journal_rows_cannot_be_updated_replaced_upserted_or_deleted,
    databases = 2,
    journal_is_append_only
);
async fn journal_is_append_only(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::LEDGER).await;
    let operator = stack.operator().await;
    let alice = stack.customer().await;
    let account = open_book(&stack, &alice, "EUR").await;
    // Two keyed postings, so every table has rows and request records exist.
    deposit(&stack, &operator, &account, 1_000).await;
    deposit(&stack, &operator, &account, 2_000).await;
    let db = bank_kit::db::connect(&stack.database_urls["ledger"])
        .await
        .unwrap();

    for table in &JOURNAL_TABLES {
        let before = census(&db, table).await;
        assert!(before.0 >= 2, "{} has rows to attack", table.name);
        for statement in rewrites(table, db.get_database_backend()) {
            let refused = db.execute_unprepared(&statement).await;
            assert!(refused.is_err(), "{statement} was allowed");
            assert_eq!(census(&db, table).await, before, "{statement} changed rows");
        }
    }
    let report = verify(&stack, &operator).await;
    assert!(report.ok, "{:?}", report.mismatches);
}

db_test!(
    journal_rows_name_only_rows_that_exist_and_books_are_never_removed,
    databases = 2,
    journal_references_hold
);
/// The journal's references are checked by the database, per statement on
/// PostgreSQL and by foreign keys on SQLite: a row naming a book, transfer or
/// hold that does not exist is refused, and so is anything that would take a
/// referenced book away afterwards. On PostgreSQL an entry must also be on one
/// of its transfer's two books.
async fn journal_references_hold(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::LEDGER).await;
    let operator = stack.operator().await;
    let alice = stack.customer().await;
    let account = open_book(&stack, &alice, "EUR").await;
    // A book no entry names yet: only the guard keeps it.
    let unused = open_book(&stack, &alice, "EUR").await;
    deposit(&stack, &operator, &account, 1_000).await;
    let db = bank_kit::db::connect(&stack.database_urls["ledger"])
        .await
        .unwrap();
    let backend = db.get_database_backend();
    let now = match backend {
        sea_orm::DbBackend::Postgres => "now()",
        _ => "'2026-12-05T00:00:00Z'",
    };
    let deposited = db
        .query_one_raw(sea_orm::Statement::from_string(
            backend,
            format!(
                "SELECT transfer_id, from_account_id FROM ledger_transfers WHERE to_account_id = '{account}'"
            ),
        ))
        .await
        .unwrap()
        .unwrap();
    let transfer_id: String = deposited.try_get("", "transfer_id").unwrap();
    let settlement: String = deposited.try_get("", "from_account_id").unwrap();
    let missing = "00000000-0000-7000-8000-000000000000";
    let hold = uuid::Uuid::now_v7().to_string();
    let entry = |account_id: &str, transfer: &str| {
        format!(
            "INSERT INTO ledger_entries (account_id, account_seq, transfer_id, amount_minor, balance_after_minor, currency, counterparty_account_id, description, prev_hash, entry_hash, created_at)
             VALUES ('{account_id}', 999, '{transfer}', 1, 1, 'EUR', '{account}', 'dangling', 'h', 'h', {now})"
        )
    };
    let transfer = |from: &str, reverses: &str| {
        format!(
            "INSERT INTO ledger_transfers (transfer_id, kind, from_account_id, to_account_id, amount_minor, currency, description, reverses_transfer_id, status, initiated_by, created_at)
             VALUES ('{}', 'transfer', '{from}', '{account}', 1, 'EUR', 'dangling', {reverses}, 'posted', 'x', {now})",
            uuid::Uuid::now_v7()
        )
    };
    let new_hold = |from: &str| {
        format!(
            "INSERT INTO ledger_holds (hold_id, from_account_id, to_account_id, amount_minor, currency, description, initiated_by, created_at, expires_at)
             VALUES ('{hold}', '{from}', '{account}', 1, 'EUR', 'dangling', 'x', {now}, {now})"
        )
    };
    let resolution = |hold_id: &str| {
        format!(
            "INSERT INTO ledger_hold_resolutions (hold_id, state, amount_minor, resolved_at)
             VALUES ('{hold_id}', 'voided', 0, {now})"
        )
    };
    let request = |column: &str, id: &str| {
        format!(
            "INSERT INTO ledger_requests (scope, idempotency_key, request_hash, {column}, created_at)
             VALUES ('x', '{column}', 'h', '{id}', {now})"
        )
    };
    // Each dangling row, beside the same row naming what exists: the latter are
    // accepted (in a transaction rolled back), so the former are refused for
    // their references and nothing else.
    let pairs = [
        (entry(&account, missing), entry(&account, &transfer_id)),
        (
            entry(missing, &transfer_id),
            entry(&settlement, &transfer_id),
        ),
        (transfer(missing, "NULL"), transfer(&unused, "NULL")),
        (
            transfer(&unused, &format!("'{missing}'")),
            transfer(&unused, &format!("'{transfer_id}'")),
        ),
        (new_hold(missing), new_hold(&unused)),
        (resolution(missing), resolution(&hold)),
        (
            request("transfer_id", missing),
            request("transfer_id", &transfer_id),
        ),
        (request("hold_id", missing), request("hold_id", &hold)),
    ];
    let accepted = db.begin().await.unwrap();
    for (_, valid) in &pairs {
        accepted
            .execute_unprepared(valid)
            .await
            .unwrap_or_else(|error| panic!("{valid}: {error}"));
    }
    accepted.rollback().await.unwrap();

    let mut refused: Vec<String> = pairs.into_iter().map(|(dangling, _)| dangling).collect();
    refused.extend([
        format!("DELETE FROM ledger_accounts WHERE account_id = '{unused}'"),
        format!("DELETE FROM ledger_accounts WHERE account_id = '{account}'"),
        format!(
            "UPDATE ledger_accounts SET account_id = '{missing}' WHERE account_id = '{unused}'"
        ),
    ]);
    if backend == sea_orm::DbBackend::Postgres {
        refused.extend([
            // A book that exists, but not one of the entry's transfer.
            entry(&unused, &transfer_id),
            "TRUNCATE ledger_accounts".to_owned(),
            "TRUNCATE ledger_accounts CASCADE".to_owned(),
        ]);
    }
    let books = || async {
        db.query_one_raw(sea_orm::Statement::from_string(
            backend,
            "SELECT COUNT(*) AS n FROM ledger_accounts".to_owned(),
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<i64>("", "n")
        .unwrap()
    };
    let before = (books().await, census(&db, &JOURNAL_TABLES[0]).await);
    for statement in &refused {
        let result = db.execute_unprepared(statement).await;
        assert!(result.is_err(), "{statement} was allowed");
    }
    assert_eq!(
        (books().await, census(&db, &JOURNAL_TABLES[0]).await),
        before
    );
    // A book's other columns still change (its balance, its status).
    db.execute_unprepared(&format!(
        "UPDATE ledger_accounts SET updated_at = updated_at WHERE account_id = '{unused}'"
    ))
    .await
    .unwrap();
    let report = verify(&stack, &operator).await;
    assert!(report.ok, "{:?}", report.mismatches);
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
    tamper_with_balance(&stack, &account).await;

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
    let World {
        stack,
        operator: _,
        alice,
        from,
        to,
    } = world(&urls, 1_000).await;
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

/// Runs `change` on `table` as an attacker with database access would: past the
/// append-only triggers (disabled on PostgreSQL, `sqlite_trigger` dropped on
/// SQLite).
async fn tamper(db: &sea_orm::DatabaseConnection, table: &str, sqlite_trigger: &str, change: &str) {
    let (disable, enable) = match db.get_database_backend() {
        sea_orm::DbBackend::Postgres => (
            format!("ALTER TABLE {table} DISABLE TRIGGER USER"),
            format!("ALTER TABLE {table} ENABLE TRIGGER USER"),
        ),
        _ => (
            format!("DROP TRIGGER {sqlite_trigger}"),
            "SELECT 1".to_owned(),
        ),
    };
    db.execute_unprepared(&disable).await.unwrap();
    db.execute_unprepared(change).await.unwrap();
    db.execute_unprepared(&enable).await.unwrap();
}

/// A world after one transfer of 300 from `from` to `to`, with a direct
/// connection to the ledger's database, as an attacker with access would have.
struct Transferred {
    world: World,
    transfer_id: String,
    db: sea_orm::DatabaseConnection,
}

async fn transferred(urls: &[String]) -> Transferred {
    let world = world(urls, 1_000).await;
    let posted = transfer(
        &world.stack,
        &world.alice,
        transfer_request(&world.from, &world.to, 300, "t"),
    )
    .await
    .unwrap();
    let db = bank_kit::db::connect(&world.stack.database_urls["ledger"])
        .await
        .unwrap();
    Transferred {
        world,
        transfer_id: posted.transfer_id,
        db,
    }
}

db_test!(
    verification_reports_a_tampered_entry,
    databases = 2,
    tampered_entry_is_reported
);
async fn tampered_entry_is_reported(urls: Vec<String>) {
    let Transferred {
        world:
            World {
                stack,
                operator,
                to,
                ..
            },
        transfer_id,
        db,
    } = transferred(&urls).await;

    tamper(
        &db,
        "ledger_entries",
        "ledger_entries_no_update",
        &format!(
            "UPDATE ledger_entries SET amount_minor = 30 WHERE transfer_id = '{transfer_id}' AND account_id = '{to}'"
        ),
    )
    .await;

    let report = verify(&stack, &operator).await;
    let kinds: Vec<&str> = report.mismatches.iter().map(|m| m.kind.as_str()).collect();
    assert!(!report.ok);
    for kind in ["hash_chain", "transfer_sum", "transfer_entries"] {
        assert!(
            kinds.contains(&kind),
            "{kind} not reported: {:?}",
            report.mismatches
        );
    }
}

db_test!(
    verification_reports_a_deleted_request_record,
    databases = 2,
    deleted_request_record_is_reported
);
async fn deleted_request_record_is_reported(urls: Vec<String>) {
    let Transferred {
        world: World {
            stack, operator, ..
        },
        transfer_id,
        db,
    } = transferred(&urls).await;
    assert!(verify(&stack, &operator).await.ok);

    tamper(
        &db,
        "ledger_requests",
        "ledger_requests_no_delete",
        &format!("DELETE FROM ledger_requests WHERE transfer_id = '{transfer_id}'"),
    )
    .await;

    let report = verify(&stack, &operator).await;
    assert!(!report.ok);
    assert!(
        report
            .mismatches
            .iter()
            .any(|m| m.kind == "request_record" && m.detail.contains(&transfer_id)),
        "{:?}",
        report.mismatches
    );
}

db_test!(
    verification_reads_entries_forged_below_the_first_sequence,
    databases = 2,
    forged_entry_before_the_chain_is_reported
);
async fn forged_entry_before_the_chain_is_reported(urls: Vec<String>) {
    let Transferred {
        world:
            World {
                stack,
                operator,
                to,
                ..
            },
        transfer_id,
        db,
    } = transferred(&urls).await;

    // Inserts are allowed by the append-only triggers; sequence 0 sits before
    // the chain, where a verifier that starts counting at 1 would not look.
    db.execute_unprepared(&format!(
        "INSERT INTO ledger_entries (account_id, account_seq, transfer_id, amount_minor, balance_after_minor,
                                     currency, counterparty_account_id, description, prev_hash, entry_hash, created_at)
         SELECT account_id, 0, transfer_id, amount_minor, balance_after_minor, currency, counterparty_account_id,
                description, prev_hash, entry_hash, created_at
         FROM ledger_entries WHERE transfer_id = '{}' AND account_id = '{to}'",
        transfer_id
    ))
    .await
    .unwrap();

    let report = verify(&stack, &operator).await;
    assert!(!report.ok);
    assert!(
        report
            .mismatches
            .iter()
            .any(|m| m.kind == "hash_chain" && m.account_id == to),
        "{:?}",
        report.mismatches
    );
}

db_test!(
    verification_under_live_traffic_reports_no_false_mismatches,
    databases = 2,
    verify_under_traffic
);
async fn verify_under_traffic(urls: Vec<String>) {
    let World {
        stack,
        operator,
        alice,
        from,
        to,
    } = world(&urls, 100_000).await;

    let ledger = stack.ledger().await;
    let traffic: Vec<_> = (0..40)
        .map(|index| {
            let mut client = ledger.clone();
            let request = authed(
                &alice.access_token,
                transfer_request(&from, &to, 10, &format!("live-{index}")),
            );
            tokio::spawn(async move { client.create_transfer(request).await })
        })
        .collect();
    let audits: Vec<_> = (0..5)
        .map(|_| {
            let mut client = ledger.clone();
            let request = authed(&operator.access_token, pb::VerifyLedgerRequest {});
            tokio::spawn(async move { client.verify_ledger(request).await })
        })
        .collect();

    for audit in audits {
        let report = audit.await.unwrap().unwrap().into_inner();
        assert!(report.ok, "{:?}", report.mismatches);
    }
    for posted in traffic {
        posted.await.unwrap().unwrap();
    }
    assert!(verify(&stack, &operator).await.ok);
}

db_test!(
    incremental_verification_reads_only_what_came_since_its_checkpoint,
    databases = 1,
    incremental_verification
);
async fn incremental_verification(urls: Vec<String>) {
    use bank_ledger::store::{VerifyCheckpoint, VerifyScope::SinceCheckpoint};
    let store = crate::helpers::store_at(&urls[0]).await;
    let first_book = crate::helpers::funded_book(&store, 100).await;
    let mut checkpoint = VerifyCheckpoint::default();
    let round = store
        .verify_with(&mut checkpoint, SinceCheckpoint)
        .await
        .unwrap();
    assert!(round.mismatches.is_empty(), "{:?}", round.mismatches);
    assert_eq!(round.entries_checked, 2, "the deposit's two legs");

    crate::helpers::funded_book(&store, 50).await;
    let round = store
        .verify_with(&mut checkpoint, SinceCheckpoint)
        .await
        .unwrap();
    assert!(round.mismatches.is_empty(), "{:?}", round.mismatches);
    assert_eq!(round.entries_checked, 2, "only the second deposit");
    let round = store
        .verify_with(&mut checkpoint, SinceCheckpoint)
        .await
        .unwrap();
    assert_eq!(round.entries_checked, 0);

    store
        .connection()
        .execute_unprepared(&format!(
            "UPDATE ledger_accounts SET balance_minor = 5000 WHERE account_id = '{first_book}'"
        ))
        .await
        .unwrap();
    for _ in 0..2 {
        // Found, and found again: a book that does not match keeps its point.
        let round = store
            .verify_with(&mut checkpoint, SinceCheckpoint)
            .await
            .unwrap();
        assert!(
            round
                .mismatches
                .iter()
                .any(|m| m.account_id == first_book.to_string() && m.kind == "balance"),
            "{:?}",
            round.mismatches
        );
    }
    let full = store.verify().await.unwrap();
    assert_eq!(full.entries_checked, 4);
    assert!(!full.mismatches.is_empty());
}
