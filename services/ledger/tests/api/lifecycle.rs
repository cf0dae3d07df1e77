//! A book's life: opened unpostable, activated by the account service, and every
//! status decision numbered so that the account service's mirror converges.

use bank_e2e::{Parts, authed, db_test, spawn};
use bank_kit::ErrorCode;
use bank_proto::ledger::v1 as pb;

use crate::helpers::{balance, code, deposit, open_unactivated_book, set_book_status};

fn deposit_request(account_id: &str, key: &str) -> pb::DepositRequest {
    pb::DepositRequest {
        account_id: account_id.to_owned(),
        amount_minor: 500,
        currency: "EUR".into(),
        reference: "wire".into(),
        idempotency_key: key.into(),
    }
}

db_test!(
    no_money_reaches_a_book_until_its_account_is_activated,
    databases = 2,
    half_open_books
);
async fn half_open_books(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::LEDGER).await;
    let operator = stack.operator().await;
    let alice = stack.customer().await;
    let service = stack.account_service_token().await;
    // The account service opened the book, then stopped before it recorded the
    // account.
    let book = open_unactivated_book(&stack, &alice, "EUR").await;

    let refused = stack
        .ledger()
        .await
        .deposit(authed(
            &operator.access_token,
            deposit_request(&book, "early"),
        ))
        .await
        .unwrap_err();
    assert_eq!(code(&refused), ErrorCode::NotFound);
    let unseen = stack
        .ledger()
        .await
        .get_balance(authed(
            &alice.access_token,
            pb::GetBalanceRequest {
                account_id: book.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(code(&unseen), ErrorCode::NotFound);

    let activated = set_book_status(&stack, &service, &book, pb::LedgerAccountStatus::Active)
        .await
        .unwrap();
    assert_eq!(activated.status_version, 1);
    deposit(&stack, &operator, &book, 500).await;
    assert_eq!(balance(&stack, &alice, &book).await, 500);
}

db_test!(
    every_status_decision_is_numbered_and_the_last_one_holds,
    databases = 2,
    status_versions
);
async fn status_versions(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::LEDGER).await;
    let alice = stack.customer().await;
    let service = stack.account_service_token().await;
    let book = open_unactivated_book(&stack, &alice, "EUR").await;
    let set = |status| set_book_status(&stack, &service, &book, status);

    assert_eq!(
        set(pb::LedgerAccountStatus::Active)
            .await
            .unwrap()
            .status_version,
        1
    );
    assert_eq!(
        set(pb::LedgerAccountStatus::Frozen)
            .await
            .unwrap()
            .status_version,
        2
    );
    // Asking again for what it already is decides nothing new.
    assert_eq!(
        set(pb::LedgerAccountStatus::Frozen)
            .await
            .unwrap()
            .status_version,
        2
    );
    assert_eq!(
        set(pb::LedgerAccountStatus::Active)
            .await
            .unwrap()
            .status_version,
        3
    );

    // Freezes and unfreezes racing: the answer with the highest version names
    // the status the ledger ended with.
    let mut racing = tokio::task::JoinSet::new();
    for index in 0..16 {
        let ledger = stack.ledger().await;
        let (service, book) = (service.clone(), book.clone());
        racing.spawn(async move {
            let status = if index % 2 == 0 {
                pb::LedgerAccountStatus::Frozen
            } else {
                pb::LedgerAccountStatus::Active
            };
            let mut ledger = ledger;
            ledger
                .set_ledger_account_status(authed(
                    &service,
                    pb::SetLedgerAccountStatusRequest {
                        account_id: book,
                        status: status as i32,
                        expected_status_version: None,
                    },
                ))
                .await
                .unwrap()
                .into_inner()
        });
    }
    let mut answers = Vec::new();
    while let Some(answer) = racing.join_next().await {
        answers.push(answer.unwrap());
    }
    let latest = answers
        .iter()
        .max_by_key(|answer| answer.status_version)
        .unwrap();
    assert!(latest.status_version > 3 && latest.status_version <= 3 + 16);
    // Asking for the latest answer's status changes nothing: the ledger holds it,
    // at that version.
    let latest_status = pb::LedgerAccountStatus::try_from(latest.status).unwrap();
    let again = set(latest_status).await.unwrap();
    assert_eq!(
        (again.status, again.status_version),
        (latest.status, latest.status_version)
    );
}
