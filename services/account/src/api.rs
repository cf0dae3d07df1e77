//! The account service's gRPC API. Opening an account writes it as pending, asks
//! the ledger to open its book (unpostable, idempotent), records it active, then
//! has the ledger activate the book; a crash or ledger outage in between leaves an
//! account that clients never see (or, once recorded active, a book that takes no
//! money yet), completed the next time its owner lists or fetches accounts. A
//! keyed open (`idempotency_key`) answers a retry with the account it made.
//! Statuses are decided by the ledger and recorded here by version.

use std::sync::Arc;

use bank_kit::{
    ErrorCode, ServiceError,
    auth::{Principal, ServiceTokenSource, TokenVerifier},
    error::from_downstream,
    money::Currency,
    time::to_rfc3339,
};
use bank_proto::{
    account::v1::{self as pb, account_service_server::AccountService},
    ledger::v1::{
        LedgerAccountStatus, OpenLedgerAccountRequest, SetLedgerAccountStatusRequest,
        ledger_service_client::LedgerServiceClient,
    },
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use tonic::{Request, Response, Status};

/// The account domain's errors answer callers with the status of their code.
impl From<AccountError> for Status {
    fn from(error: AccountError) -> Status {
        ServiceError::from(error).into()
    }
}

use bank_domain::idempotency::IdempotencyKey;

use crate::{
    domain::{
        Account, AccountError, AccountStatus, Nickname, Provisioning, account_number,
        open_request_hash,
    },
    store::{AccountStore, Inserted, OpenRequest},
};

const DEFAULT_PAGE_SIZE: u64 = 50;
const MAX_PAGE_SIZE: u64 = 100;
/// Attempts at drawing an unused account number before giving up.
const NUMBER_ATTEMPTS: usize = 5;

pub struct AccountApi {
    store: Arc<AccountStore>,
    verifier: TokenVerifier,
    ledger: LedgerServiceClient<bank_kit::grpc::Pool>,
    service_token: ServiceTokenSource,
    max_open_per_user: u32,
}

impl AccountApi {
    pub fn new(
        store: Arc<AccountStore>,
        verifier: TokenVerifier,
        ledger: LedgerServiceClient<bank_kit::grpc::Pool>,
        service_token: ServiceTokenSource,
        max_open_per_user: u32,
    ) -> AccountApi {
        AccountApi {
            store,
            verifier,
            ledger,
            service_token,
            max_open_per_user,
        }
    }

    /// Takes the account the rest of its way to usable (see
    /// [`Provisioning`]): opens its book, records it active, activates the book.
    /// Every step is idempotent, so an open that stopped half-way resumes here.
    async fn provision(&self, account: &mut Account) -> Result<(), ServiceError> {
        if account.provisioning() == Provisioning::OpenBook {
            let request = self
                .service_token
                .request(OpenLedgerAccountRequest {
                    account_id: account.account_id.to_string(),
                    owner_id: account.owner_id.clone(),
                    currency: account.currency.to_string(),
                })
                .await?;
            self.ledger
                .clone()
                .open_ledger_account(request)
                .await
                .map_err(|status| from_downstream(&status))?;
            // Recorded before the book is activated: no money reaches a book
            // whose account is not recorded here.
            self.store.record_active(account.account_id).await?;
            account.status = AccountStatus::Active;
        }
        if account.provisioning() == Provisioning::ActivateBook {
            // Only a book still at version 0 is activated: if it is past that,
            // another request activated it (and perhaps changed it since), and
            // its current status is what is recorded.
            let (status, status_version) = self
                .set_ledger_status(account.account_id, LedgerAccountStatus::Active, Some(0))
                .await?;
            self.store
                .record_status(account.account_id, status, status_version)
                .await?;
            *account = self
                .store
                .get(account.account_id)
                .await?
                .ok_or(AccountError::NotFound)?;
        }
        Ok(())
    }

    /// Asks the ledger, which enforces statuses when posting, for `status`;
    /// returns the status it holds afterwards, and that decision's version.
    async fn set_ledger_status(
        &self,
        account_id: uuid::Uuid,
        status: LedgerAccountStatus,
        expected_status_version: Option<i64>,
    ) -> Result<(AccountStatus, i64), ServiceError> {
        let request = self
            .service_token
            .request(SetLedgerAccountStatusRequest {
                account_id: account_id.to_string(),
                status: status as i32,
                expected_status_version,
            })
            .await?;
        let confirmed = self
            .ledger
            .clone()
            .set_ledger_account_status(request)
            .await
            .map_err(|status| from_downstream(&status))?
            .into_inner();
        let status = match LedgerAccountStatus::try_from(confirmed.status) {
            Ok(LedgerAccountStatus::Active) => AccountStatus::Active,
            Ok(LedgerAccountStatus::Frozen) => AccountStatus::Frozen,
            Ok(LedgerAccountStatus::Closed) => AccountStatus::Closed,
            Ok(LedgerAccountStatus::Unspecified) | Err(_) => {
                return Err(ServiceError::internal(
                    &"the ledger answered without a status",
                ));
            }
        };
        Ok((status, confirmed.status_version))
    }

    /// Has the ledger decide a status change, then records the decision here
    /// unless a newer one is recorded already, so that racing changes end here
    /// as they ended in the ledger. Answers with the account as recorded.
    async fn change_status(
        &self,
        account: Account,
        status: AccountStatus,
    ) -> Result<Account, ServiceError> {
        let ledger_status = match status {
            AccountStatus::Active => LedgerAccountStatus::Active,
            AccountStatus::Frozen => LedgerAccountStatus::Frozen,
            AccountStatus::Closed => LedgerAccountStatus::Closed,
            AccountStatus::Pending => {
                return Err(ServiceError::internal(&"cannot set an account pending"));
            }
        };
        let (status, status_version) = self
            .set_ledger_status(account.account_id, ledger_status, None)
            .await?;
        self.store
            .record_status(account.account_id, status, status_version)
            .await?;
        Ok(self
            .store
            .get(account.account_id)
            .await?
            .ok_or(AccountError::NotFound)?)
    }

    /// The account an earlier open with the same key made, or
    /// `idempotency_key_reused` if that open asked for something else.
    async fn earlier_open(
        &self,
        owner_id: &str,
        request: Option<&OpenRequest>,
    ) -> Result<Option<Account>, ServiceError> {
        let Some(request) = request else {
            return Ok(None);
        };
        let Some((request_hash, account_id)) = self
            .store
            .open_request(owner_id, &request.idempotency_key)
            .await?
        else {
            return Ok(None);
        };
        if request_hash != request.request_hash {
            return Err(AccountError::IdempotencyKeyReused.into());
        }
        let account =
            self.store.get(account_id).await?.ok_or_else(|| {
                ServiceError::internal(&"an open request names a missing account")
            })?;
        Ok(Some(account))
    }

    /// Writes a new pending account under a fresh number (and the keyed
    /// request's record); a concurrent open that took the key first wins.
    async fn insert_new(
        &self,
        owner_id: &str,
        currency: Currency,
        nickname: &Nickname,
        request: Option<&OpenRequest>,
    ) -> Result<Account, ServiceError> {
        for _ in 0..NUMBER_ATTEMPTS {
            let candidate = Account {
                account_id: uuid::Uuid::now_v7(),
                number: account_number(random_digits()),
                owner_id: owner_id.to_owned(),
                currency,
                nickname: nickname.as_str().to_owned(),
                status: AccountStatus::Pending,
                status_version: 0,
                created_at: bank_kit::time::now(),
            };
            match self
                .store
                .insert(&candidate, request, self.max_open_per_user)
                .await?
            {
                Inserted::Inserted => return Ok(candidate),
                Inserted::LimitReached => {
                    return Err(AccountError::LimitExceeded(self.max_open_per_user).into());
                }
                Inserted::NumberTaken => continue,
                Inserted::KeyTaken => {
                    return self
                        .earlier_open(owner_id, request)
                        .await?
                        .ok_or_else(|| ServiceError::internal(&"a taken key names no account"));
                }
            }
        }
        Err(ServiceError::internal(&"no free account number found"))
    }

    /// Moves an account to `target`: closing is the owner's alone (an operator
    /// sees other customers' accounts but cannot end them), freezing and
    /// unfreezing are operators' only. A closed account stays closed.
    async fn transition(
        &self,
        principal: &Principal,
        raw_id: &str,
        target: AccountStatus,
    ) -> Result<Account, ServiceError> {
        if target != AccountStatus::Closed {
            principal.require_operator()?;
        }
        let account = self.visible_for(principal, raw_id, Some(target)).await?;
        if account.status == AccountStatus::Closed {
            return Err(AccountError::Closed.into());
        }
        let account = self.change_status(account, target).await?;
        tracing::info!(account_id = %account.account_id, status = target.as_str(), "account status changed");
        Ok(account)
    }

    /// The account if the caller may see it. Other users' accounts and accounts
    /// still pending answer NOT_FOUND; a pending account of the caller's is
    /// completed first.
    async fn visible(&self, principal: &Principal, raw_id: &str) -> Result<Account, ServiceError> {
        self.visible_for(principal, raw_id, None).await
    }

    /// [`Self::visible`], refusing before anything is done to the account a
    /// caller who may see it but not move it to `target` (an operator closing a
    /// customer's account).
    async fn visible_for(
        &self,
        principal: &Principal,
        raw_id: &str,
        target: Option<AccountStatus>,
    ) -> Result<Account, ServiceError> {
        let account_id = parse_account_id(raw_id)?;
        let mut account = self
            .store
            .get(account_id)
            .await?
            .ok_or(AccountError::NotFound)?;
        let allowed =
            principal.is_operator() || principal.user_id() == Some(account.owner_id.as_str());
        if !allowed {
            return Err(AccountError::NotFound.into());
        }
        if target == Some(AccountStatus::Closed)
            && principal.user_id() != Some(account.owner_id.as_str())
        {
            return Err(ServiceError::new(
                ErrorCode::Forbidden,
                "only the account's owner can close it",
            ));
        }
        if account.needs_activation() {
            self.provision(&mut account).await?;
        }
        Ok(account)
    }
}

fn parse_account_id(raw: &str) -> Result<uuid::Uuid, ServiceError> {
    uuid::Uuid::try_parse(raw).map_err(|_| ServiceError::invalid("account_id must be a UUID"))
}

fn account_to_proto(account: &Account) -> pb::Account {
    let status = match account.status {
        AccountStatus::Active => pb::AccountStatus::Active,
        AccountStatus::Frozen => pb::AccountStatus::Frozen,
        AccountStatus::Closed => pb::AccountStatus::Closed,
        AccountStatus::Pending => pb::AccountStatus::Unspecified,
    };
    pb::Account {
        account_id: account.account_id.to_string(),
        number: account.number.clone(),
        owner_id: account.owner_id.clone(),
        currency: account.currency.to_string(),
        nickname: account.nickname.clone(),
        status: status as i32,
        created_at: to_rfc3339(account.created_at),
    }
}

fn random_digits() -> [u8; 11] {
    let random = uuid::Uuid::new_v4();
    let bytes = random.as_bytes();
    let mut digits = [0u8; 11];
    for (digit, byte) in digits.iter_mut().zip(bytes.iter()) {
        *digit = byte % 10;
    }
    digits
}

const PAGE_TOKEN_PREFIX: &str = "accounts-after:";

fn parse_page_token(raw: &str) -> Result<Option<uuid::Uuid>, ServiceError> {
    if raw.is_empty() {
        return Ok(None);
    }
    let invalid = || ServiceError::invalid("page_token is not valid");
    let decoded = URL_SAFE_NO_PAD.decode(raw).map_err(|_| invalid())?;
    let text = String::from_utf8(decoded).map_err(|_| invalid())?;
    let id = text.strip_prefix(PAGE_TOKEN_PREFIX).ok_or_else(invalid)?;
    uuid::Uuid::try_parse(id).map(Some).map_err(|_| invalid())
}

fn encode_page_token(after: uuid::Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("{PAGE_TOKEN_PREFIX}{after}"))
}

#[tonic::async_trait]
impl AccountService for AccountApi {
    #[tracing::instrument(name = "account.open_account", skip_all)]
    async fn open_account(
        &self,
        request: Request<pb::OpenAccountRequest>,
    ) -> Result<Response<pb::OpenAccountResponse>, Status> {
        let principal = self.verifier.authenticate(&request).await?;
        let owner_id = principal.require_user()?.to_owned();
        let body = request.into_inner();
        let currency = Currency::parse_supported(&body.currency)
            .map_err(|error| ServiceError::invalid(error.to_string()))?;
        let nickname = Nickname::parse(&body.nickname)?;
        let request = match body.idempotency_key.as_str() {
            "" => None,
            raw => Some(OpenRequest {
                idempotency_key: IdempotencyKey::parse(raw).map_err(ServiceError::from)?,
                request_hash: open_request_hash(currency, &nickname),
            }),
        };
        let mut account = match self.earlier_open(&owner_id, request.as_ref()).await? {
            Some(account) => account,
            None => {
                self.insert_new(&owner_id, currency, &nickname, request.as_ref())
                    .await?
            }
        };
        if account.needs_activation() {
            self.provision(&mut account).await?;
        }
        tracing::info!(account_id = %account.account_id, "account opened");
        Ok(Response::new(pb::OpenAccountResponse {
            account: Some(account_to_proto(&account)),
        }))
    }

    #[tracing::instrument(name = "account.get_account", skip_all)]
    async fn get_account(
        &self,
        request: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::GetAccountResponse>, Status> {
        let principal = self.verifier.authenticate(&request).await?;
        let account = self
            .visible(&principal, &request.get_ref().account_id)
            .await?;
        Ok(Response::new(pb::GetAccountResponse {
            account: Some(account_to_proto(&account)),
        }))
    }

    #[tracing::instrument(name = "account.list_accounts", skip_all)]
    async fn list_accounts(
        &self,
        request: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        let principal = self.verifier.authenticate(&request).await?;
        let body = request.into_inner();
        let owner_id = if body.owner_id.is_empty() {
            principal.require_user()?.to_owned()
        } else {
            principal.require_operator()?;
            uuid::Uuid::try_parse(&body.owner_id)
                .map_err(|_| ServiceError::invalid("owner_id must be a UUID"))?
                .to_string()
        };
        let page_size = match body.page_size {
            0 => DEFAULT_PAGE_SIZE,
            size if size > 0 && size as u64 <= MAX_PAGE_SIZE => size as u64,
            _ => return Err(ServiceError::invalid("page_size must be between 1 and 100").into()),
        };
        let after = parse_page_token(&body.page_token)?;
        let mut accounts = self
            .store
            .list_by_owner(&owner_id, after, page_size + 1)
            .await?;
        let has_more = accounts.len() as u64 > page_size;
        accounts.truncate(usize::try_from(page_size).unwrap_or(usize::MAX));
        let next_page_token = match accounts.last() {
            Some(last) if has_more => encode_page_token(last.account_id),
            _ => String::new(),
        };
        let mut visible = Vec::with_capacity(accounts.len());
        for mut account in accounts {
            if account.needs_activation() {
                // Completed now if the ledger is reachable; otherwise left out
                // until it is.
                if let Err(error) = self.provision(&mut account).await {
                    tracing::warn!(account_id = %account.account_id, %error, "pending account not completed");
                    continue;
                }
            }
            visible.push(account_to_proto(&account));
        }
        Ok(Response::new(pb::ListAccountsResponse {
            accounts: visible,
            next_page_token,
        }))
    }

    #[tracing::instrument(name = "account.close_account", skip_all)]
    async fn close_account(
        &self,
        request: Request<pb::CloseAccountRequest>,
    ) -> Result<Response<pb::CloseAccountResponse>, Status> {
        let principal = self.verifier.authenticate(&request).await?;
        let account = self
            .transition(
                &principal,
                &request.get_ref().account_id,
                AccountStatus::Closed,
            )
            .await?;
        Ok(Response::new(pb::CloseAccountResponse {
            account: Some(account_to_proto(&account)),
        }))
    }

    #[tracing::instrument(name = "account.freeze_account", skip_all)]
    async fn freeze_account(
        &self,
        request: Request<pb::FreezeAccountRequest>,
    ) -> Result<Response<pb::FreezeAccountResponse>, Status> {
        let principal = self.verifier.authenticate(&request).await?;
        let account = self
            .transition(
                &principal,
                &request.get_ref().account_id,
                AccountStatus::Frozen,
            )
            .await?;
        Ok(Response::new(pb::FreezeAccountResponse {
            account: Some(account_to_proto(&account)),
        }))
    }

    #[tracing::instrument(name = "account.unfreeze_account", skip_all)]
    async fn unfreeze_account(
        &self,
        request: Request<pb::UnfreezeAccountRequest>,
    ) -> Result<Response<pb::UnfreezeAccountResponse>, Status> {
        let principal = self.verifier.authenticate(&request).await?;
        let account = self
            .transition(
                &principal,
                &request.get_ref().account_id,
                AccountStatus::Active,
            )
            .await?;
        Ok(Response::new(pb::UnfreezeAccountResponse {
            account: Some(account_to_proto(&account)),
        }))
    }
}
