//! Operator methods: disabling users and setting roles.

use std::collections::HashMap;

use bank_e2e::{LOGIN_THROTTLE, OPERATOR_PASSWORD, Parts, USER_PASSWORD, authed, db_test, spawn};
use bank_proto::identity::v1 as pb;
use secrecy::SecretString;

db_test!(
    disabled_users_cannot_log_in_or_refresh,
    databases = 1,
    disable_user
);
async fn disable_user(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::IDENTITY).await;
    let operator = stack.operator().await;
    let alice = stack.customer().await;
    let mut identity = stack.identity().await;

    let disabled = identity
        .disable_user(authed(
            &operator.access_token,
            pb::DisableUserRequest {
                user_id: alice.user_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();

    assert!(!disabled.enabled);
    let login = identity
        .login(pb::LoginRequest {
            email: alice.email.clone(),
            password: USER_PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(login.code(), tonic::Code::Unauthenticated);
    let refresh = identity
        .refresh(pb::RefreshRequest {
            refresh_token: alice.refresh_token,
        })
        .await
        .unwrap_err();
    assert_eq!(refresh.code(), tonic::Code::Unauthenticated);
}

db_test!(only_operators_manage_users, databases = 1, operator_only);
async fn operator_only(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::IDENTITY).await;
    let alice = stack.customer().await;
    let bob = stack.customer().await;
    let mut identity = stack.identity().await;

    let escalate = identity
        .set_user_roles(authed(
            &alice.access_token,
            pb::SetUserRolesRequest {
                user_id: alice.user_id.clone(),
                roles: vec!["operator".into()],
            },
        ))
        .await
        .unwrap_err();
    let disable = identity
        .disable_user(authed(
            &alice.access_token,
            pb::DisableUserRequest {
                user_id: bob.user_id.clone(),
            },
        ))
        .await
        .unwrap_err();

    assert_eq!(escalate.code(), tonic::Code::PermissionDenied);
    assert_eq!(disable.code(), tonic::Code::PermissionDenied);
}

db_test!(
    operators_set_roles_that_new_tokens_carry,
    databases = 1,
    set_roles
);
async fn set_roles(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::IDENTITY).await;
    let operator = stack.operator().await;
    let alice = stack.customer().await;
    let mut identity = stack.identity().await;

    let invalid = identity
        .set_user_roles(authed(
            &operator.access_token,
            pb::SetUserRolesRequest {
                user_id: alice.user_id.clone(),
                roles: vec!["root".into()],
            },
        ))
        .await
        .unwrap_err();
    let updated = identity
        .set_user_roles(authed(
            &operator.access_token,
            pb::SetUserRolesRequest {
                user_id: alice.user_id.clone(),
                roles: vec!["customer".into(), "operator".into()],
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();

    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        updated.roles,
        vec!["customer".to_owned(), "operator".to_owned()]
    );
    let tokens = stack.login(&alice.email, USER_PASSWORD).await;
    let me = identity
        .get_current_user(authed(&tokens.access_token, pb::GetCurrentUserRequest {}))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert!(me.roles.contains(&"operator".to_owned()));
}

db_test!(
    bootstrapping_an_existing_address_replaces_its_password_and_sessions,
    databases = 1,
    bootstrap_existing_user
);
async fn bootstrap_existing_user(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::IDENTITY).await;
    // Someone registered the address before it was configured as the operator's.
    let squatter = stack.customer().await;
    let keys = tempfile::tempdir().unwrap();
    let config = bank_identity::Config {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        admin_listen_addr: "127.0.0.1:0".parse().unwrap(),
        database_url: urls[0].clone(),
        migration_database_url: None,
        signing_keys_dir: keys.path().to_path_buf(),
        bootstrap_operator: Some(bank_identity::BootstrapOperator {
            email: squatter.email.clone(),
            password: SecretString::from(OPERATOR_PASSWORD),
        }),
        service_clients: HashMap::new(),
        session_idle_timeout: chrono::Duration::minutes(30),
        session_absolute_lifetime: chrono::Duration::hours(12),
        login_throttle: LOGIN_THROTTLE,
        tls: Default::default(),
        reflection: true,
    };
    bank_identity::build(&config).await.unwrap();

    let mut identity = stack.identity().await;
    let own_password = identity
        .login(pb::LoginRequest {
            email: squatter.email.clone(),
            password: USER_PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(own_password.code(), tonic::Code::Unauthenticated);
    let old_session = identity
        .refresh(pb::RefreshRequest {
            refresh_token: squatter.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(old_session.code(), tonic::Code::Unauthenticated);
    let tokens = stack.login(&squatter.email, OPERATOR_PASSWORD).await;
    let me = identity
        .get_current_user(authed(&tokens.access_token, pb::GetCurrentUserRequest {}))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(me.user_id, squatter.user_id);
    assert!(me.roles.contains(&"operator".to_owned()), "{:?}", me.roles);

    // An operator disabled on purpose stays disabled across restarts.
    let operator = stack.operator().await;
    identity
        .disable_user(authed(
            &operator.access_token,
            pb::DisableUserRequest {
                user_id: squatter.user_id.clone(),
            },
        ))
        .await
        .unwrap();
    bank_identity::build(&config).await.unwrap();
    let after_restart = identity
        .login(pb::LoginRequest {
            email: squatter.email.clone(),
            password: OPERATOR_PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(after_restart.code(), tonic::Code::Unauthenticated);
}

db_test!(
    the_last_enabled_operator_keeps_the_operator_role,
    databases = 1,
    last_operator
);
async fn last_operator(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::IDENTITY).await;
    let operator = stack.operator().await;
    let alice = stack.customer().await;
    let mut identity = stack.identity().await;
    let set_roles = |user_id: &str, roles: &[&str]| pb::SetUserRolesRequest {
        user_id: user_id.to_owned(),
        roles: roles.iter().map(|role| (*role).to_owned()).collect(),
    };

    let alone = identity
        .set_user_roles(authed(
            &operator.access_token,
            set_roles(&operator.user_id, &["customer"]),
        ))
        .await
        .unwrap_err();
    assert_eq!(alone.code(), tonic::Code::AlreadyExists, "{alone:?}");

    // With a second operator, stepping down is fine; then she is the last one.
    identity
        .set_user_roles(authed(
            &operator.access_token,
            set_roles(&alice.user_id, &["customer", "operator"]),
        ))
        .await
        .unwrap();
    identity
        .set_user_roles(authed(
            &operator.access_token,
            set_roles(&operator.user_id, &["customer"]),
        ))
        .await
        .unwrap();
    let alice_operator = stack.login(&alice.email, USER_PASSWORD).await;
    let last = identity
        .set_user_roles(authed(
            &alice_operator.access_token,
            set_roles(&alice.user_id, &["customer"]),
        ))
        .await
        .unwrap_err();
    assert_eq!(last.code(), tonic::Code::AlreadyExists);
    let me = identity
        .get_current_user(authed(
            &alice_operator.access_token,
            pb::GetCurrentUserRequest {},
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert!(me.roles.contains(&"operator".to_owned()));
}
