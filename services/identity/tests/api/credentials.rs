//! Registration, login, profile and the signing keys.

use bank_e2e::{LOGIN_THROTTLE, Parts, USER_PASSWORD, authed, db_test, spawn};
use bank_kit::{ErrorCode, auth::TokenVerifier};
use bank_proto::identity::v1 as pb;

fn register(email: &str, password: &str) -> pb::RegisterRequest {
    pb::RegisterRequest {
        email: email.into(),
        password: password.into(),
        full_name: "Alice Example".into(),
    }
}

db_test!(
    registered_user_can_log_in_and_read_their_profile,
    databases = 1,
    register_and_login
);
async fn register_and_login(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::IDENTITY).await;
    let mut identity = stack.identity().await;

    let user = identity
        .register(register("  Alice@Example.com ", USER_PASSWORD))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    let tokens = stack.login("alice@example.com", USER_PASSWORD).await;
    let me = identity
        .get_current_user(authed(&tokens.access_token, pb::GetCurrentUserRequest {}))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();

    assert_eq!(user.email, "alice@example.com");
    assert_eq!(user.roles, vec!["customer".to_owned()]);
    assert_eq!(me.user_id, user.user_id);
    assert_eq!(tokens.token_type, "Bearer");
    assert_eq!(tokens.expires_in, 900);
}

db_test!(
    access_tokens_verify_against_the_published_keys,
    databases = 1,
    tokens_verify_with_jwks
);
async fn tokens_verify_with_jwks(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::IDENTITY).await;
    let alice = stack.customer().await;
    let jwks = stack
        .identity()
        .await
        .get_jwks(pb::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;

    let principal = TokenVerifier::fixed(&jwks)
        .verify(&alice.access_token)
        .await
        .unwrap();

    assert_eq!(jwks[0].alg, "EdDSA");
    assert_eq!(principal.user_id(), Some(alice.user_id.as_str()));
    let header = alice.access_token.split('.').next().unwrap();
    let header = String::from_utf8(base64_decode(header)).unwrap();
    assert!(
        header.contains(&format!("\"kid\":\"{}\"", jwks[0].kid)),
        "{header}"
    );
}

fn base64_decode(segment: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .unwrap()
}

db_test!(
    registering_a_taken_email_is_a_conflict,
    databases = 1,
    duplicate_email
);
async fn duplicate_email(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::IDENTITY).await;
    let mut identity = stack.identity().await;
    identity
        .register(register("bob@example.com", USER_PASSWORD))
        .await
        .unwrap();

    let error = identity
        .register(register("BOB@example.com", USER_PASSWORD))
        .await
        .unwrap_err();

    assert_eq!(bank_kit::error::code_of_status(&error), ErrorCode::Conflict);
}

db_test!(
    weak_and_malformed_registrations_are_refused,
    databases = 1,
    registration_policy
);
async fn registration_policy(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::IDENTITY).await;
    let mut identity = stack.identity().await;
    let too_long = "x".repeat(257);

    for request in [
        register("carol@example.com", "short"),
        register("carol@example.com", "password1234"),
        register("carol@example.com", "qwertyuiop123"),
        register("carol@example.com", "carol@example.com"),
        register("carol@example.com", &too_long),
        register("carol@example.com", &"\u{fb01}".repeat(200)),
        register("not-an-email", USER_PASSWORD),
        pb::RegisterRequest {
            full_name: String::new(),
            ..register("carol@example.com", USER_PASSWORD)
        },
    ] {
        let error = identity.register(request).await.unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
    }
    let login = identity
        .login(pb::LoginRequest {
            email: "carol@example.com".into(),
            password: USER_PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        login.code(),
        tonic::Code::Unauthenticated,
        "nothing was created"
    );
}

db_test!(
    wrong_password_and_unknown_email_look_the_same,
    databases = 1,
    login_failures_are_uniform
);
async fn login_failures_are_uniform(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::IDENTITY).await;
    let alice = stack.customer().await;
    let mut identity = stack.identity().await;

    let wrong_password = identity
        .login(pb::LoginRequest {
            email: alice.email.clone(),
            password: "not the password at all".into(),
        })
        .await
        .unwrap_err();
    let unknown_email = identity
        .login(pb::LoginRequest {
            email: "nobody@example.com".into(),
            password: "not the password at all".into(),
        })
        .await
        .unwrap_err();

    assert_eq!(wrong_password.code(), tonic::Code::Unauthenticated);
    assert_eq!(wrong_password.code(), unknown_email.code());
    assert_eq!(wrong_password.message(), unknown_email.message());
}

db_test!(
    service_tokens_need_the_right_client_secret,
    databases = 1,
    service_tokens
);
async fn service_tokens(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::IDENTITY).await;
    let mut identity = stack.identity().await;

    let token = stack.account_service_token().await;
    let wrong = identity
        .issue_service_token(pb::IssueServiceTokenRequest {
            client_id: "account".into(),
            client_secret: "guess".into(),
        })
        .await
        .unwrap_err();
    let unknown = identity
        .issue_service_token(pb::IssueServiceTokenRequest {
            client_id: "ledger".into(),
            client_secret: "guess".into(),
        })
        .await
        .unwrap_err();

    let jwks = identity
        .get_jwks(pb::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    let principal = TokenVerifier::fixed(&jwks).verify(&token).await.unwrap();
    assert!(principal.is_service("account"));
    assert!(!principal.is_operator());
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
    assert_eq!(unknown.code(), tonic::Code::Unauthenticated);
}

/// A request as the gateway sends it for a client at `client`: the address,
/// vouched for with the gateway's own service token `vouch`.
fn from_client<T>(vouch: &str, client: &str, mut request: tonic::Request<T>) -> tonic::Request<T> {
    request
        .metadata_mut()
        .insert("x-client-address", client.parse().unwrap());
    request.metadata_mut().insert(
        "x-bank-service-authorization",
        format!("Bearer {vouch}").parse().unwrap(),
    );
    request
}

fn login_from(
    vouch: &str,
    client: &str,
    email: &str,
    password: &str,
) -> tonic::Request<pb::LoginRequest> {
    from_client(
        vouch,
        client,
        tonic::Request::new(pb::LoginRequest {
            email: email.into(),
            password: password.into(),
        }),
    )
}

db_test!(
    repeated_failures_slow_the_guesser_not_the_owner,
    databases = 1,
    login_backoff
);
async fn login_backoff(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::IDENTITY).await;
    let vouch = stack.gateway_service_token().await;
    let alice = stack.customer().await;
    let mut identity = stack.identity().await;

    for _ in 0..6 {
        let error = identity
            .login(login_from(
                &vouch,
                "203.0.113.7",
                &alice.email,
                "a wrong guess of a password",
            ))
            .await
            .unwrap_err();
        assert_eq!(error.code(), tonic::Code::Unauthenticated);
    }
    let throttled = identity
        .login(login_from(
            &vouch,
            "203.0.113.7",
            &alice.email,
            USER_PASSWORD,
        ))
        .await
        .unwrap_err();
    let owner_elsewhere = identity
        .login(login_from(
            &vouch,
            "198.51.100.20",
            &alice.email,
            USER_PASSWORD,
        ))
        .await;

    assert_eq!(
        bank_kit::error::code_of_status(&throttled),
        ErrorCode::RateLimited
    );
    let retry_after = retry_after(&throttled);
    let first_delay = LOGIN_THROTTLE.per_client.first_delay_seconds;
    assert!(
        (first_delay - 60..=first_delay).contains(&retry_after),
        "retry after {retry_after}"
    );
    assert!(
        owner_elsewhere.is_ok(),
        "the owner on another client is not locked out"
    );
}

db_test!(
    unknown_emails_are_throttled_like_known_ones,
    databases = 1,
    unknown_email_backoff
);
async fn unknown_email_backoff(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::IDENTITY).await;
    let vouch = stack.gateway_service_token().await;
    let mut identity = stack.identity().await;

    for _ in 0..6 {
        identity
            .login(login_from(
                &vouch,
                "203.0.113.9",
                "nobody@example.com",
                "some password guess",
            ))
            .await
            .unwrap_err();
    }
    let throttled = identity
        .login(login_from(
            &vouch,
            "203.0.113.9",
            "nobody@example.com",
            "some password guess",
        ))
        .await
        .unwrap_err();

    assert_eq!(
        bank_kit::error::code_of_status(&throttled),
        ErrorCode::RateLimited
    );
}

db_test!(
    parallel_guesses_cannot_outrun_the_count,
    databases = 1,
    parallel_guesses
);
async fn parallel_guesses(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::IDENTITY).await;
    let vouch = stack.gateway_service_token().await;
    let alice = stack.customer().await;
    let identity = stack.identity().await;

    let guesses: Vec<_> = (0..20)
        .map(|index| {
            let mut client = identity.clone();
            let request = login_from(
                &vouch,
                "203.0.113.50",
                &alice.email,
                &format!("parallel guess number {index}"),
            );
            tokio::spawn(async move { client.login(request).await })
        })
        .collect();
    let mut checked = 0;
    for guess in guesses {
        let status = guess.await.unwrap().unwrap_err();
        if status.code() == tonic::Code::Unauthenticated {
            checked += 1;
        } else {
            assert_eq!(
                bank_kit::error::code_of_status(&status),
                ErrorCode::RateLimited
            );
        }
    }

    // Five free failures and the one that set the backoff; every other guess
    // waits without its password being looked at.
    assert_eq!(checked, 6, "{checked} passwords were checked");
}

db_test!(
    guessing_from_many_clients_cannot_lock_out_a_fresh_device,
    databases = 1,
    distributed_guessing
);
async fn distributed_guessing(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::IDENTITY).await;
    let vouch = stack.gateway_service_token().await;
    let alice = stack.customer().await;
    let mut identity = stack.identity().await;

    for index in 0..22 {
        let client = format!("192.0.2.{index}");
        identity
            .login(login_from(
                &vouch,
                &client,
                &alice.email,
                "a distributed wrong guess",
            ))
            .await
            .unwrap_err();
    }
    let returning_guesser = identity
        .login(login_from(
            &vouch,
            "192.0.2.0",
            &alice.email,
            "a distributed wrong guess",
        ))
        .await
        .unwrap_err();
    let owner = identity
        .login(login_from(
            &vouch,
            "198.51.100.1",
            &alice.email,
            USER_PASSWORD,
        ))
        .await;

    assert_eq!(
        bank_kit::error::code_of_status(&returning_guesser),
        ErrorCode::RateLimited
    );
    // The 21st failure set the account-wide backoff; the 22nd, from a fresh
    // client, did not push it further out.
    assert!(
        retry_after(&returning_guesser) <= LOGIN_THROTTLE.per_account.first_delay_seconds,
        "the running backoff was extended"
    );
    assert!(owner.is_ok(), "the owner's fresh device logs in");
}

fn retry_after(status: &tonic::Status) -> i64 {
    status
        .metadata()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no retry-after on {status:?}"))
}

fn change_password_from(
    vouch: &str,
    client: &str,
    token: &str,
    current: &str,
) -> tonic::Request<pb::ChangePasswordRequest> {
    from_client(
        vouch,
        client,
        authed(
            token,
            pb::ChangePasswordRequest {
                current_password: current.into(),
                new_password: "another long passphrase here".into(),
            },
        ),
    )
}

db_test!(
    wrong_current_passwords_are_throttled_like_logins,
    databases = 1,
    password_change_backoff
);
async fn password_change_backoff(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::IDENTITY).await;
    let vouch = stack.gateway_service_token().await;
    let alice = stack.customer().await;
    let mut identity = stack.identity().await;
    let free = LOGIN_THROTTLE.per_client.free_failures;

    // The free failures, and the one that sets the backoff.
    for _ in 0..=free {
        let wrong = identity
            .change_password(change_password_from(
                &vouch,
                "203.0.113.40",
                &alice.access_token,
                "a wrong current password",
            ))
            .await
            .unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::InvalidArgument);
    }
    let throttled = identity
        .change_password(change_password_from(
            &vouch,
            "203.0.113.40",
            &alice.access_token,
            USER_PASSWORD,
        ))
        .await
        .unwrap_err();

    assert_eq!(
        bank_kit::error::code_of_status(&throttled),
        ErrorCode::RateLimited,
        "even the right password waits once the guesses ran out"
    );
    assert!(retry_after(&throttled) > 0);
}

fn service_token_from(
    vouch: &str,
    client: &str,
    secret: &str,
) -> tonic::Request<pb::IssueServiceTokenRequest> {
    from_client(
        vouch,
        client,
        tonic::Request::new(pb::IssueServiceTokenRequest {
            client_id: "account".into(),
            client_secret: secret.into(),
        }),
    )
}

db_test!(
    wrong_client_secrets_are_throttled_like_logins,
    databases = 1,
    service_secret_backoff
);
async fn service_secret_backoff(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::IDENTITY).await;
    let vouch = stack.gateway_service_token().await;
    let mut identity = stack.identity().await;

    for _ in 0..=LOGIN_THROTTLE.per_client.free_failures {
        let wrong = identity
            .issue_service_token(service_token_from(
                &vouch,
                "203.0.113.41",
                "guessed-secret-0000",
            ))
            .await
            .unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
    }
    let throttled = identity
        .issue_service_token(service_token_from(
            &vouch,
            "203.0.113.41",
            bank_e2e::SERVICE_SECRET,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        bank_kit::error::code_of_status(&throttled),
        ErrorCode::RateLimited
    );
    // The real service, elsewhere, is not held back.
    identity
        .issue_service_token(service_token_from(
            &vouch,
            "198.51.100.41",
            bank_e2e::SERVICE_SECRET,
        ))
        .await
        .unwrap();
}

db_test!(
    a_client_address_is_believed_only_from_the_gateway,
    databases = 1,
    forged_addresses
);
async fn forged_addresses(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::IDENTITY).await;
    let alice = stack.customer().await;
    let mut identity = stack.identity().await;

    // A guesser at identity's own port, with a fresh forged address each time,
    // half of them "vouched for" with a customer's token.
    let mut throttled_after = None;
    for index in 0..60 {
        let mut request = tonic::Request::new(pb::LoginRequest {
            email: alice.email.clone(),
            password: format!("guess number {index}"),
        });
        request.metadata_mut().insert(
            "x-client-address",
            format!("203.0.113.{index}").parse().unwrap(),
        );
        if index % 2 == 0 {
            request.metadata_mut().insert(
                "x-bank-service-authorization",
                format!("Bearer {}", alice.access_token).parse().unwrap(),
            );
        }
        let refused = identity.login(request).await.unwrap_err();
        if bank_kit::error::code_of_status(&refused) == ErrorCode::RateLimited {
            throttled_after = Some(index);
            break;
        }
    }
    assert_eq!(
        throttled_after,
        // The free failures, and the one that set the backoff, get answers.
        Some(LOGIN_THROTTLE.per_client.free_failures as usize + 1),
        "the forged addresses were believed"
    );
}

db_test!(
    after_a_hundred_consecutive_failures_every_client_waits,
    databases = 1,
    account_lockout
);
async fn account_lockout(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::IDENTITY).await;
    let vouch = stack.gateway_service_token().await;
    let alice = stack.customer().await;
    let mut identity = stack.identity().await;
    let threshold = bank_identity::domain::ACCOUNT_LOCKOUT_FAILURES;

    // A botnet: each address fails once, so no address is ever throttled itself.
    for index in 0..threshold {
        let refused = identity
            .login(login_from(
                &vouch,
                &format!("198.18.{}.{}", index / 250, index % 250 + 1),
                &alice.email,
                "a botnet guess",
            ))
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::Unauthenticated,
            "guess {index}"
        );
    }
    // Now even a client never seen before, with the right password, waits.
    let fresh = identity
        .login(login_from(
            &vouch,
            "192.0.2.200",
            &alice.email,
            USER_PASSWORD,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        bank_kit::error::code_of_status(&fresh),
        ErrorCode::RateLimited
    );
    assert!(
        retry_after(&fresh) >= bank_identity::domain::LOCKOUT_MIN_WAIT_SECONDS,
        "{}",
        retry_after(&fresh)
    );
}

db_test!(
    passwords_are_compared_in_their_nfkc_form,
    databases = 1,
    nfkc_passwords
);
async fn nfkc_passwords(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::IDENTITY).await;
    let mut identity = stack.identity().await;
    let decomposed = "cafe\u{301} au lait sans sucre";
    let composed = "caf\u{e9} au lait sans sucre";
    identity
        .register(register("dora@example.com", decomposed))
        .await
        .unwrap();

    for typed in [composed, decomposed] {
        let login = identity
            .login(pb::LoginRequest {
                email: "dora@example.com".into(),
                password: typed.into(),
            })
            .await;
        assert!(login.is_ok(), "{typed:?}: {login:?}");
    }
}

db_test!(
    a_hash_made_before_normalisation_is_verified_once_and_rehashed,
    databases = 1,
    legacy_hash
);
async fn legacy_hash(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::IDENTITY).await;
    let alice = stack.customer().await;
    let raw = "\u{ff37}\u{ff49}\u{ff4e}\u{ff54}\u{ff45}\u{ff52} moorland cottage";
    let db = bank_kit::db::connect(&stack.database_urls["identity"])
        .await
        .unwrap();
    let store = bank_identity::store::IdentityStore::new(db);
    let hasher = bank_identity::passwords::PasswordHasherPool::new().unwrap();
    // As registration stored it before passwords were normalised.
    let legacy = hasher.hash(raw).await.unwrap();
    store
        .set_password_hash(&alice.user_id, &legacy)
        .await
        .unwrap();
    let mut identity = stack.identity().await;

    identity
        .login(pb::LoginRequest {
            email: alice.email.clone(),
            password: raw.into(),
        })
        .await
        .unwrap();

    let stored = store.password_hash(&alice.user_id).await.unwrap().unwrap();
    assert_ne!(stored, legacy, "rehashed at the first login");
    let normalized = bank_identity::domain::normalize_password(raw);
    assert_eq!(normalized, "Winter moorland cottage");
    assert!(hasher.verify(&normalized, &stored).await.unwrap().matches);
    assert!(!hasher.verify(raw, &stored).await.unwrap().matches);
    for typed in [raw, normalized.as_str()] {
        let login = identity
            .login(pb::LoginRequest {
                email: alice.email.clone(),
                password: typed.into(),
            })
            .await;
        assert!(login.is_ok(), "{typed:?}: {login:?}");
    }
}
