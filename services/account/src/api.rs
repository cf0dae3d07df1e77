//! The account service's gRPC API. Opening an account writes it as pending, asks
//! the ledger to open its book (idempotent), then activates it; a crash or ledger
//! outage in between leaves a pending account that clients never see and that is
//! completed the next time its owner lists or fetches accounts.

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
use tonic::{Request, Response, Status, transport::Channel};

use crate::{
    domain::{Account, AccountError, AccountStatus, Nickname, account_number},
    store::AccountStore,
};

const DEFAULT_PAGE_SIZE: u64 = 50;
const MAX_PAGE_SIZE: u64 = 100;
/// Attempts at drawing an unused account number before giving up.
const NUMBER_ATTEMPTS: usize = 5;

pub struct AccountApi {
    store: Arc<AccountStore>,
    verifier: TokenVerifier,
    ledger: LedgerServiceClient<Channel>,
    service_token: ServiceTokenSource,
}

impl AccountApi {
    pub fn new(
        store: Arc<AccountStore>,
        verifier: TokenVerifier,
        ledger: LedgerServiceClient<Channel>,
        service_token: ServiceTokenSource,
    ) -> AccountApi {
        AccountApi {
            store,
            verifier,
            ledger,
            service_token,
        }
    }

    /// Opens the account's book in the ledger and marks the account active.
    async fn provision(&self, account: &mut Account) -> Result<(), ServiceError> {
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
        self.store
            .set_status(account.account_id, AccountStatus::Active)
            .await?;
        account.status = AccountStatus::Active;
        Ok(())
    }

    /// Mirrors a status change into the ledger, which enforces it when posting,
    /// then records it here.
    async fn change_status(
        &self,
        mut account: Account,
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
        let request = self
            .service_token
            .request(SetLedgerAccountStatusRequest {
                account_id: account.account_id.to_string(),
                status: ledger_status as i32,
            })
            .await?;
        let confirmed = self
            .ledger
            .clone()
            .set_ledger_account_status(request)
            .await
            .map_err(|status| from_downstream(&status))?
            .into_inner();
        // Record what the ledger, which enforces it, now holds: after a race with
        // another change that may differ from what was asked.
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
        self.store.set_status(account.account_id, status).await?;
        account.status = status;
        Ok(account)
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
        if account.status == AccountStatus::Pending {
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
        let mut account = None;
        for _ in 0..NUMBER_ATTEMPTS {
            let candidate = Account {
                account_id: uuid::Uuid::now_v7(),
                number: account_number(random_digits()),
                owner_id: owner_id.clone(),
                currency,
                nickname: nickname.as_str().to_owned(),
                status: AccountStatus::Pending,
                created_at: bank_kit::time::now(),
            };
            if self.store.insert(&candidate).await? {
                account = Some(candidate);
                break;
            }
        }
        let mut account =
            account.ok_or_else(|| ServiceError::internal(&"no free account number found"))?;
        self.provision(&mut account).await?;
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
            if account.status == AccountStatus::Pending {
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
