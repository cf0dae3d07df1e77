//! Refresh-token rotation, reuse detection, logout and password changes.

use bank_e2e::{Parts, USER_PASSWORD, authed, db_test, spawn};
use bank_proto::identity::v1 as pb;

db_test!(
    refresh_rotates_the_token_and_spends_the_old_one,
    databases = 1,
    refresh_rotates
);
async fn refresh_rotates(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::IDENTITY).await;
    let alice = stack.customer().await;
    let mut identity = stack.identity().await;

    let rotated = identity
        .refresh(pb::RefreshRequest {
            refresh_token: alice.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();

    assert_ne!(rotated.refresh_token, alice.refresh_token);
    identity
        .get_current_user(authed(&rotated.access_token, pb::GetCurrentUserRequest {}))
        .await
        .unwrap();
    let next = identity
        .refresh(pb::RefreshRequest {
            refresh_token: rotated.refresh_token.clone(),
        })
        .await;
    assert!(next.is_ok(), "the new refresh token works");
}

db_test!(
    reusing_a_spent_refresh_token_revokes_the_session,
    databases = 1,
    reuse_revokes_session
);
async fn reuse_revokes_session(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::IDENTITY).await;
    let alice = stack.customer().await;
    let mut identity = stack.identity().await;
    let rotated = identity
        .refresh(pb::RefreshRequest {
            refresh_token: alice.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();

    let replay = identity
        .refresh(pb::RefreshRequest {
            refresh_token: alice.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    let legitimate = identity
        .refresh(pb::RefreshRequest {
            refresh_token: rotated.refresh_token,
        })
        .await
        .unwrap_err();

    assert_eq!(replay.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        legitimate.code(),
        tonic::Code::Unauthenticated,
        "the whole session family is revoked"
    );
    let db = bank_kit::db::connect(&stack.database_urls["identity"])
        .await
        .unwrap();
    let store = bank_identity::store::IdentityStore::new(db);
    assert!(
        store
            .audit_kinds(&alice.user_id)
            .await
            .unwrap()
            .contains(&"refresh_token_reused".to_owned())
    );
}

db_test!(logout_revokes_the_session, databases = 1, logout_revokes);
async fn logout_revokes(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::IDENTITY).await;
    let alice = stack.customer().await;
    let mut identity = stack.identity().await;

    identity
        .logout(authed(
            &alice.access_token,
            pb::LogoutRequest {
                refresh_token: alice.refresh_token.clone(),
            },
        ))
        .await
        .unwrap();

    let refresh = identity
        .refresh(pb::RefreshRequest {
            refresh_token: alice.refresh_token,
        })
        .await
        .unwrap_err();
    assert_eq!(refresh.code(), tonic::Code::Unauthenticated);
}

db_test!(
    changing_the_password_revokes_other_sessions,
    databases = 1,
    password_change
);
async fn password_change(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::IDENTITY).await;
    let alice = stack.customer().await;
    let other_device = stack.login(&alice.email, USER_PASSWORD).await;
    let mut identity = stack.identity().await;
    let new_password = "a brand new long passphrase";

    let wrong_current = identity
        .change_password(authed(
            &alice.access_token,
            pb::ChangePasswordRequest {
                current_password: "not my password at all".into(),
                new_password: new_password.into(),
            },
        ))
        .await
        .unwrap_err();
    identity
        .change_password(authed(
            &alice.access_token,
            pb::ChangePasswordRequest {
                current_password: USER_PASSWORD.into(),
                new_password: new_password.into(),
            },
        ))
        .await
        .unwrap();

    assert_eq!(wrong_current.code(), tonic::Code::InvalidArgument);
    let other = identity
        .refresh(pb::RefreshRequest {
            refresh_token: other_device.refresh_token,
        })
        .await;
    assert_eq!(
        other.unwrap_err().code(),
        tonic::Code::Unauthenticated,
        "other sessions are revoked"
    );
    let own = identity
        .refresh(pb::RefreshRequest {
            refresh_token: alice.refresh_token,
        })
        .await;
    assert!(
        own.is_ok(),
        "the session that changed the password survives"
    );
    let old_login = identity
        .login(pb::LoginRequest {
            email: alice.email.clone(),
            password: USER_PASSWORD.into(),
        })
        .await;
    assert!(old_login.is_err());
    stack.login(&alice.email, new_password).await;
}

db_test!(
    a_refresh_token_presented_many_times_at_once_rotates_exactly_once,
    databases = 1,
    concurrent_refresh
);
async fn concurrent_refresh(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::IDENTITY).await;
    let alice = stack.customer().await;
    let identity = stack.identity().await;

    let attempts: Vec<_> = (0..8)
        .map(|_| {
            let mut client = identity.clone();
            let refresh_token = alice.refresh_token.clone();
            tokio::spawn(async move { client.refresh(pb::RefreshRequest { refresh_token }).await })
        })
        .collect();
    let mut rotated = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(_) => rotated += 1,
            Err(status) => assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}"),
        }
    }

    assert_eq!(rotated, 1, "{rotated} rotations of one token");
}

db_test!(
    a_login_that_raced_a_password_change_gets_no_session,
    databases = 1,
    login_races_password_change
);
async fn login_races_password_change(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::IDENTITY).await;
    let alice = stack.customer().await;
    let db = bank_kit::db::connect(&stack.database_urls["identity"])
        .await
        .unwrap();
    let store = bank_identity::store::IdentityStore::new(db);
    let email = bank_identity::domain::Email::parse(&alice.email).unwrap();
    let policy = bank_identity::store::SessionPolicy {
        idle_timeout: chrono::Duration::minutes(30),
        absolute_lifetime: chrono::Duration::hours(12),
    };
    // A login checked the password against this hash...
    let (_, checked) = store.user_by_email(&email).await.unwrap().unwrap();
    // ...then the password changed (or a bootstrap reset it) before its session
    // was written.
    store
        .set_password_hash(&alice.user_id, "$argon2id$v=19$replaced")
        .await
        .unwrap();
    let late = store
        .create_session(&alice.user_id, &checked, "late-token-digest", policy)
        .await;
    assert!(late.is_err(), "a session outlived the password change");
    // A rehash of the old password must not undo the change either.
    let reverted = store
        .replace_password_hash(&alice.user_id, &checked, "$argon2id$v=19$rehash")
        .await
        .unwrap();
    assert!(!reverted);

    // With the current hash, sessions start as usual; a disabled user gets none.
    let (_, current) = store.user_by_email(&email).await.unwrap().unwrap();
    store
        .create_session(&alice.user_id, &current, "fresh-token-digest", policy)
        .await
        .unwrap();
    store.set_enabled(&alice.user_id, false).await.unwrap();
    let disabled = store
        .create_session(&alice.user_id, &current, "other-token-digest", policy)
        .await;
    assert!(disabled.is_err(), "a disabled user got a session");
}

db_test!(
    a_logout_with_a_bogus_refresh_token_still_ends_the_callers_session,
    databases = 1,
    logout_bogus_token
);
async fn logout_bogus_token(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::IDENTITY).await;
    let alice = stack.customer().await;
    let other_device = stack.login(&alice.email, USER_PASSWORD).await;
    let mut identity = stack.identity().await;

    identity
        .logout(authed(
            &alice.access_token,
            pb::LogoutRequest {
                refresh_token: "not-a-refresh-token".into(),
            },
        ))
        .await
        .unwrap();

    let ended = identity
        .refresh(pb::RefreshRequest {
            refresh_token: alice.refresh_token,
        })
        .await
        .unwrap_err();
    assert_eq!(ended.code(), tonic::Code::Unauthenticated);
    // Only the session whose access token logged out ends.
    identity
        .refresh(pb::RefreshRequest {
            refresh_token: other_device.refresh_token,
        })
        .await
        .unwrap();
}

db_test!(
    the_revocation_feed_never_misses_a_late_commit,
    databases = 1,
    revocation_feed_order
);
async fn revocation_feed_order(urls: Vec<String>) {
    use sea_orm::{ConnectionTrait, Statement, TransactionTrait};

    let stack = spawn(&urls, Parts::IDENTITY).await;
    let alice = stack.customer().await;
    stack.login(&alice.email, USER_PASSWORD).await;
    let db = bank_kit::db::connect(&stack.database_urls["identity"])
        .await
        .unwrap();
    let backend = db.get_database_backend();
    let sessions: Vec<String> = db
        .query_all_raw(Statement::from_sql_and_values(
            backend,
            "SELECT session_id FROM sessions WHERE user_id = $1 ORDER BY created_at",
            [alice.user_id.clone().into()],
        ))
        .await
        .unwrap()
        .iter()
        .map(|row| row.try_get("", "session_id").unwrap())
        .collect();
    let store = bank_identity::store::IdentityStore::new(db.clone());
    let since = bank_kit::time::now() - chrono::Duration::hours(1);
    let ended = |page: &bank_identity::store::RevocationPage| -> Vec<String> {
        page.sessions.iter().map(|(id, _)| id.clone()).collect()
    };
    let start = store.revoked_sessions(0, 0, since, 100).await.unwrap();
    assert!(start.complete && start.sessions.is_empty());

    // The first session ends in a transaction that commits last.
    let late = db.begin().await.unwrap();
    late.execute_raw(Statement::from_sql_and_values(
        backend,
        "UPDATE sessions SET revoked_at = $1, revoked_reason = 'logout' WHERE session_id = $2",
        [bank_kit::time::now().into(), sessions[0].clone().into()],
    ))
    .await
    .unwrap();
    let mut expected_early = Vec::new();
    if backend == sea_orm::DbBackend::Postgres {
        // PostgreSQL lets another one end and commit meanwhile; SQLite's
        // writers take turns.
        store
            .revoke_session(&sessions[1], &alice.user_id)
            .await
            .unwrap();
        expected_early.push(sessions[1].clone());
    }
    let early = store
        .revoked_sessions(start.horizon, 0, since, 100)
        .await
        .unwrap();
    assert_eq!(
        ended(&early),
        expected_early,
        "the uncommitted end is unseen"
    );
    late.commit().await.unwrap();

    let next = store
        .revoked_sessions(early.horizon, 0, since, 100)
        .await
        .unwrap();
    assert!(
        ended(&next).contains(&sessions[0]),
        "the late commit is in the next round: {:?}",
        ended(&next)
    );
    let paged = store.revoked_sessions(0, 0, since, 1).await.unwrap();
    assert!(!paged.complete && paged.sessions.len() == 1);
    let rest = store
        .revoked_sessions(0, paged.last_seq, since, 100)
        .await
        .unwrap();
    assert!(rest.complete);
    assert_eq!(
        paged.sessions.len() + rest.sessions.len(),
        expected_early.len() + 1
    );
}
