//! Ended sessions stop working everywhere within two seconds: at the gateway and
//! at every service, after a logout, a password change, a role change or a
//! disable, whichever identity replica handled it. Every token is used (and so
//! cached by each verifier) before its session ends.

use std::time::{Duration, Instant};

use bank_e2e::{Parts, Stack, TestUser, USER_PASSWORD, authed, db_test, spawn};
use bank_proto::{account::v1 as account, identity::v1 as identity, ledger::v1 as ledger};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::Rest;

/// The bound DESIGN.md sets for a revocation to reach every verifier.
const REVOCATION_BOUND: Duration = Duration::from_secs(2);

/// Whether `token` is refused as unauthenticated at the gateway and at each
/// service directly, in that order.
async fn refusals(stack: &Stack, token: &str, account_id: &str) -> [bool; 4] {
    let rest = Rest::new(stack);
    let gateway = rest
        .get(&format!("/v1/accounts/{account_id}/balance"), token)
        .await
        .status
        == StatusCode::UNAUTHORIZED;
    let refused =
        |result: Result<tonic::Code, tonic::Code>| result == Err(tonic::Code::Unauthenticated);
    let identity = stack
        .identity()
        .await
        .get_current_user(authed(token, identity::GetCurrentUserRequest {}))
        .await
        .map(|_| tonic::Code::Ok)
        .map_err(|status| status.code());
    let account = stack
        .account()
        .await
        .list_accounts(authed(token, account::ListAccountsRequest::default()))
        .await
        .map(|_| tonic::Code::Ok)
        .map_err(|status| status.code());
    let ledger = stack
        .ledger()
        .await
        .get_balance(authed(
            token,
            ledger::GetBalanceRequest {
                account_id: account_id.to_owned(),
            },
        ))
        .await
        .map(|_| tonic::Code::Ok)
        .map_err(|status| status.code());
    [
        gateway,
        refused(identity),
        refused(account),
        refused(ledger),
    ]
}

/// Waits until `token` is refused everywhere, and asserts it took less than
/// [`REVOCATION_BOUND`] from `since`.
async fn assert_refused_everywhere_soon(
    stack: &Stack,
    token: &str,
    account_id: &str,
    since: Instant,
) {
    loop {
        let refused = refusals(stack, token, account_id).await;
        if refused == [true; 4] {
            break;
        }
        assert!(
            since.elapsed() < REVOCATION_BOUND,
            "still accepted after {:?} (gateway, identity, account, ledger refused: {refused:?})",
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn assert_accepted_everywhere(stack: &Stack, token: &str, account_id: &str) {
    assert_eq!(refusals(stack, token, account_id).await, [false; 4]);
}

/// A customer promoted to operator by the bootstrap operator, logged in again
/// with the new role; answers the user and the account they opened.
async fn second_operator(
    stack: &Stack,
    rest: &Rest<'_>,
    bootstrap: &TestUser,
) -> (TestUser, String) {
    let user = stack.customer().await;
    stack
        .identity()
        .await
        .set_user_roles(authed(
            &bootstrap.access_token,
            identity::SetUserRolesRequest {
                user_id: user.user_id.clone(),
                roles: vec!["customer".into(), "operator".into()],
            },
        ))
        .await
        .unwrap();
    let tokens = stack.login(&user.email, USER_PASSWORD).await;
    let account_id = rest.open_account(&tokens.access_token, "EUR").await;
    let user = TestUser {
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
        ..user
    };
    (user, account_id)
}

/// A deposit by `operator` straight to the ledger, past the gateway.
async fn ledger_deposit(
    stack: &Stack,
    operator: &str,
    account_id: &str,
) -> Result<(), tonic::Code> {
    stack
        .ledger()
        .await
        .deposit(authed(
            operator,
            ledger::DepositRequest {
                account_id: account_id.to_owned(),
                amount_minor: 1,
                currency: "EUR".into(),
                reference: "wire".into(),
                idempotency_key: uuid::Uuid::new_v4().to_string(),
            },
        ))
        .await
        .map(|_| ())
        .map_err(|status| status.code())
}

db_test!(
    a_disabled_operator_is_refused_everywhere_within_two_seconds,
    databases = 3,
    disabled_operator
);
async fn disabled_operator(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::ALL).await;
    let rest = Rest::new(&stack);
    let bootstrap = stack.operator().await;
    let (mallory, account_id) = second_operator(&stack, &rest, &bootstrap).await;
    assert_eq!(
        ledger_deposit(&stack, &mallory.access_token, &account_id).await,
        Ok(())
    );
    assert_accepted_everywhere(&stack, &mallory.access_token, &account_id).await;

    // Another identity replica handles the disable; every verifier follows
    // the first one.
    let replica = stack.identity_replica().await;
    stack
        .identity_at(replica)
        .await
        .disable_user(authed(
            &bootstrap.access_token,
            identity::DisableUserRequest {
                user_id: mallory.user_id.clone(),
            },
        ))
        .await
        .unwrap();
    let disabled_at = Instant::now();

    assert_refused_everywhere_soon(&stack, &mallory.access_token, &account_id, disabled_at).await;
    assert_eq!(
        ledger_deposit(&stack, &mallory.access_token, &account_id).await,
        Err(tonic::Code::Unauthenticated)
    );
    let deposit = rest
        .post(
            "/v1/admin/deposits",
            Some(&mallory.access_token),
            Some(&uuid::Uuid::new_v4().to_string()),
            json!({"account_id": account_id, "amount": 1, "currency": "EUR", "reference": "wire"}),
        )
        .await;
    assert_eq!(
        deposit.status,
        StatusCode::UNAUTHORIZED,
        "{:?}",
        deposit.body
    );
    assert_eq!(
        ledger_deposit(&stack, &bootstrap.access_token, &account_id).await,
        Ok(()),
        "the operator who disabled them still works"
    );
}

db_test!(
    logout_ends_its_session_everywhere_and_no_other,
    databases = 3,
    logout_everywhere
);
async fn logout_everywhere(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::ALL).await;
    let rest = Rest::new(&stack);
    let alice = stack.customer().await;
    let account_id = rest.open_account(&alice.access_token, "EUR").await;
    let other_session = stack.login(&alice.email, USER_PASSWORD).await;
    assert_accepted_everywhere(&stack, &alice.access_token, &account_id).await;
    assert_accepted_everywhere(&stack, &other_session.access_token, &account_id).await;

    let logout = rest
        .post(
            "/v1/auth/logout",
            Some(&alice.access_token),
            None,
            json!({"refresh_token": alice.refresh_token}),
        )
        .await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    let logged_out_at = Instant::now();

    assert_refused_everywhere_soon(&stack, &alice.access_token, &account_id, logged_out_at).await;
    assert_accepted_everywhere(&stack, &other_session.access_token, &account_id).await;
}

db_test!(
    role_and_password_changes_end_sessions_everywhere,
    databases = 3,
    role_and_password_changes
);
async fn role_and_password_changes(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::ALL).await;
    let rest = Rest::new(&stack);
    let bootstrap = stack.operator().await;
    let (mallory, account_id) = second_operator(&stack, &rest, &bootstrap).await;
    assert_accepted_everywhere(&stack, &mallory.access_token, &account_id).await;

    stack
        .identity()
        .await
        .set_user_roles(authed(
            &bootstrap.access_token,
            identity::SetUserRolesRequest {
                user_id: mallory.user_id.clone(),
                roles: vec!["customer".into()],
            },
        ))
        .await
        .unwrap();
    let demoted_at = Instant::now();
    assert_refused_everywhere_soon(&stack, &mallory.access_token, &account_id, demoted_at).await;
    let relogged = stack.login(&mallory.email, USER_PASSWORD).await;
    assert_accepted_everywhere(&stack, &relogged.access_token, &account_id).await;
    assert_eq!(
        ledger_deposit(&stack, &relogged.access_token, &account_id).await,
        Err(tonic::Code::PermissionDenied),
        "the new token carries the new roles"
    );

    let elsewhere = stack.login(&mallory.email, USER_PASSWORD).await;
    assert_accepted_everywhere(&stack, &elsewhere.access_token, &account_id).await;
    let changed = rest
        .post(
            "/v1/me/password",
            Some(&relogged.access_token),
            None,
            json!({"current_password": USER_PASSWORD, "new_password": "a brand new passphrase"}),
        )
        .await;
    assert_eq!(changed.status, StatusCode::NO_CONTENT, "{:?}", changed.body);
    let changed_at = Instant::now();
    assert_refused_everywhere_soon(&stack, &elsewhere.access_token, &account_id, changed_at).await;
    assert_accepted_everywhere(&stack, &relogged.access_token, &account_id).await;
}
