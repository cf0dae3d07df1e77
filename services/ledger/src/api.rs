//! The ledger's gRPC API: authenticates the caller, parses the request into domain
//! types, hands postings to the posting engine and reads to the store, and maps
//! the result back to protobuf.

use std::sync::Arc;

use bank_kit::{
    ServiceError,
    auth::{Principal, TokenVerifier},
    money::{Currency, PositiveAmount},
    time::to_rfc3339,
};
use bank_proto::ledger::v1::{self as pb, ledger_service_server::LedgerService};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use tonic::{Request, Response, Status};

use crate::{
    domain::{
        AccountId, AccountKind, AccountStatus, Description, Entry, Hold, HoldState, IdempotencyKey,
        LedgerAccount, LedgerError, Transfer, TransferId, TransferKind,
        plan::{Action, Movement, PostingRequest, Refusal},
    },
    engine::PostingEngine,
    store::LedgerStore,
};

/// The principal name of the account service, the only caller of internal methods.
pub const ACCOUNT_SERVICE: &str = "account";

const DEFAULT_PAGE_SIZE: u64 = 50;
const MAX_PAGE_SIZE: u64 = 100;

pub struct LedgerApi {
    store: Arc<LedgerStore>,
    engine: PostingEngine,
    verifier: TokenVerifier,
}

impl LedgerApi {
    pub fn new(
        store: Arc<LedgerStore>,
        engine: PostingEngine,
        verifier: TokenVerifier,
    ) -> LedgerApi {
        LedgerApi {
            store,
            engine,
            verifier,
        }
    }

    /// Posts through the engine: the answer comes once the request's commit group
    /// committed, a refusal as the error of its code.
    async fn post(&self, request: PostingRequest) -> Result<Transfer, ServiceError> {
        let outcome = self.engine.submit(request).await?;
        outcome.transfer().map_err(ServiceError::from)
    }

    /// A batch through the engine: its transfers, or its refusal with every
    /// refused item in the status details.
    async fn post_batch(&self, request: PostingRequest) -> Result<Vec<Transfer>, Status> {
        let outcome = self
            .engine
            .submit(request)
            .await
            .map_err(ServiceError::from)?;
        outcome.result.map_err(batch_status)
    }

    async fn caller<T>(&self, request: &Request<T>) -> Result<Principal, ServiceError> {
        self.verifier.authenticate(request).await
    }

    /// The account if `principal` may see it; NOT_FOUND otherwise, so that other
    /// users' accounts are indistinguishable from missing ones.
    async fn visible_account(
        &self,
        principal: &Principal,
        account_id: AccountId,
    ) -> Result<LedgerAccount, ServiceError> {
        // A book still being opened has no account yet for anyone to see.
        let account = self
            .store
            .account(account_id)
            .await?
            .filter(LedgerAccount::is_activated)
            .ok_or(LedgerError::AccountNotFound)?;
        let visible = principal.is_operator()
            || principal
                .user_id()
                .is_some_and(|user_id| account.is_owned_by(user_id));
        if visible {
            Ok(account)
        } else {
            Err(LedgerError::AccountNotFound.into())
        }
    }

    async fn operator_posting(
        &self,
        principal: &Principal,
        kind: TransferKind,
        fields: OperatorPosting<'_>,
    ) -> Result<Transfer, ServiceError> {
        principal.require_operator()?;
        let account_id = AccountId::parse(fields.account_id)?;
        let amount = PositiveAmount::parse(fields.amount_minor)
            .map_err(|error| ServiceError::invalid(error.to_string()))?;
        let currency = parse_currency(fields.currency)?;
        let reference = fields.reference.trim();
        if reference.is_empty() {
            return Err(ServiceError::invalid("reference is required"));
        }
        // Deposits and withdrawals only touch customer books.
        let account = self
            .store
            .account(account_id)
            .await?
            .ok_or(LedgerError::AccountNotFound)?;
        if account.kind != AccountKind::Customer {
            return Err(LedgerError::AccountNotFound.into());
        }
        let settlement = AccountId::settlement(currency);
        let (from_account_id, to_account_id) = match kind {
            TransferKind::Withdrawal => (account_id, settlement),
            _ => (settlement, account_id),
        };
        let movement = Movement {
            kind,
            from_account_id,
            to_account_id,
            amount,
            currency,
            description: Description::parse(reference)?,
            reverses_transfer_id: None,
        };
        let request = PostingRequest::movement(
            movement,
            None,
            principal.scope(),
            IdempotencyKey::parse(fields.idempotency_key)?,
        );
        self.post(request).await
    }
}

impl LedgerApi {
    /// A hold's post or void, as `principal` asks it: customers act as
    /// themselves (the plan checks they are the hold's payer or creator);
    /// operators and services on any hold.
    fn resolution(
        &self,
        principal: &Principal,
        action: Action,
        idempotency_key: &str,
    ) -> Result<PostingRequest, ServiceError> {
        let required_owner = match principal.user_id() {
            Some(_) if principal.is_operator() => None,
            Some(user_id) => Some(user_id.to_owned()),
            None => None,
        };
        Ok(PostingRequest {
            action,
            required_owner,
            scope: principal.scope(),
            idempotency_key: IdempotencyKey::parse(idempotency_key)?,
        })
    }
}

/// The most transfers one batch may hold.
const MAX_BATCH: usize = 100;

/// A customer transfer's fields, parsed.
fn parse_movement(
    from_account_id: &str,
    to_account_id: &str,
    amount_minor: i64,
    currency: &str,
    description: &str,
) -> Result<Movement, ServiceError> {
    let from_account_id = AccountId::parse(from_account_id)?;
    let to_account_id = AccountId::parse(to_account_id)?;
    if from_account_id == to_account_id {
        return Err(ServiceError::invalid("cannot transfer to the same account"));
    }
    let amount = PositiveAmount::parse(amount_minor)
        .map_err(|error| ServiceError::invalid(error.to_string()))?;
    Ok(Movement {
        kind: TransferKind::Transfer,
        from_account_id,
        to_account_id,
        amount,
        currency: parse_currency(currency)?,
        description: Description::parse(description)?,
        reverses_transfer_id: None,
    })
}

/// A refused batch: the first refused item's code, and every refused item in
/// the status details.
fn batch_status(refusal: Refusal) -> Status {
    let items = refusal
        .items
        .iter()
        .map(|item| pb::TransferBatchError {
            index: i32::try_from(item.index).unwrap_or(i32::MAX),
            code: item.code.as_str().to_owned(),
            detail: item.detail.clone(),
        })
        .collect();
    batch_error_status(refusal.code, &refusal.detail, items)
}

fn batch_error_status(
    code: bank_kit::ErrorCode,
    message: &str,
    errors: Vec<pb::TransferBatchError>,
) -> Status {
    let plain = Status::from(ServiceError::new(code, message));
    if errors.is_empty() || code.is_server_error() {
        return plain;
    }
    let details = pb::batch_error_details(
        plain.code(),
        plain.message(),
        pb::TransferBatchErrors { errors },
    );
    Status::with_details_and_metadata(
        plain.code(),
        plain.message().to_owned(),
        details.into(),
        plain.metadata().clone(),
    )
}

struct OperatorPosting<'a> {
    account_id: &'a str,
    amount_minor: i64,
    currency: &'a str,
    reference: &'a str,
    idempotency_key: &'a str,
}

#[tonic::async_trait]
impl LedgerService for LedgerApi {
    #[tracing::instrument(name = "ledger.create_transfer", skip_all)]
    async fn create_transfer(
        &self,
        request: Request<pb::CreateTransferRequest>,
    ) -> Result<Response<pb::CreateTransferResponse>, Status> {
        let principal = self.caller(&request).await?;
        let body = request.into_inner();
        // Customers transfer and hold from their own accounts; operators and
        // services may also place holds on any account (a card authorisation).
        let privileged = principal.is_operator() || principal.user_id().is_none();
        let required_owner = if body.pending && privileged {
            None
        } else {
            Some(principal.require_user()?.to_owned())
        };
        let movement = parse_movement(
            &body.from_account_id,
            &body.to_account_id,
            body.amount_minor,
            &body.currency,
            &body.description,
        )?;
        let idempotency_key =
            IdempotencyKey::parse(&body.idempotency_key).map_err(ServiceError::from)?;
        let action = if body.pending {
            let timeout_seconds = match body.timeout_seconds {
                0 => Hold::DEFAULT_TIMEOUT_SECONDS,
                seconds if (1..=Hold::MAX_TIMEOUT_SECONDS).contains(&seconds) => seconds,
                _ => {
                    return Err(ServiceError::invalid(
                        "timeout_seconds must be between 1 and 2592000",
                    )
                    .into());
                }
            };
            Action::Hold {
                movement,
                timeout_seconds,
            }
        } else {
            if body.timeout_seconds != 0 {
                return Err(ServiceError::invalid("timeout_seconds is only for holds").into());
            }
            Action::Move(movement)
        };
        let posting = PostingRequest {
            action,
            required_owner,
            scope: principal.scope(),
            idempotency_key,
        };
        let transfer = self.post(posting).await?;
        tracing::info!(transfer_id = %transfer.transfer_id, status = transfer.status().as_str(), "transfer accepted");
        Ok(Response::new(pb::CreateTransferResponse {
            transfer: Some(transfer_to_proto(&transfer)),
        }))
    }

    #[tracing::instrument(name = "ledger.get_transfer", skip_all)]
    async fn get_transfer(
        &self,
        request: Request<pb::GetTransferRequest>,
    ) -> Result<Response<pb::GetTransferResponse>, Status> {
        let principal = self.caller(&request).await?;
        let transfer_id =
            TransferId::parse(&request.get_ref().transfer_id).map_err(ServiceError::from)?;
        let transfer = self
            .store
            .transfer(transfer_id)
            .await
            .map_err(ServiceError::from)?
            .ok_or_else(|| ServiceError::from(LedgerError::TransferNotFound))?;
        if !principal.is_operator() {
            let user_id = principal.require_user()?;
            let mut owns_a_side = false;
            for side in [transfer.from_account_id, transfer.to_account_id] {
                if let Some(account) = self.store.account(side).await.map_err(ServiceError::from)? {
                    owns_a_side |= account.is_owned_by(user_id);
                }
            }
            if !owns_a_side {
                return Err(ServiceError::from(LedgerError::TransferNotFound).into());
            }
        }
        Ok(Response::new(pb::GetTransferResponse {
            transfer: Some(transfer_to_proto(&transfer)),
        }))
    }

    #[tracing::instrument(name = "ledger.get_balance", skip_all)]
    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::GetBalanceResponse>, Status> {
        let principal = self.caller(&request).await?;
        let account_id =
            AccountId::parse(&request.get_ref().account_id).map_err(ServiceError::from)?;
        let account = self.visible_account(&principal, account_id).await?;
        // Holds whose time is up count for nothing, written as expired or not.
        let held = self
            .store
            .held(account_id, bank_kit::time::now())
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::GetBalanceResponse {
            account_id: account.account_id.to_string(),
            currency: account.currency.to_string(),
            balance_minor: account.balance_minor,
            available_minor: account.balance_minor.saturating_sub(held),
        }))
    }

    #[tracing::instrument(name = "ledger.list_account_entries", skip_all)]
    async fn list_account_entries(
        &self,
        request: Request<pb::ListAccountEntriesRequest>,
    ) -> Result<Response<pb::ListAccountEntriesResponse>, Status> {
        let principal = self.caller(&request).await?;
        let body = request.into_inner();
        let account_id = AccountId::parse(&body.account_id).map_err(ServiceError::from)?;
        let page_size = parse_page_size(body.page_size)?;
        let before_seq = parse_page_token(&body.page_token)?;
        self.visible_account(&principal, account_id).await?;
        let mut entries = self
            .store
            .entries(account_id, before_seq, page_size + 1)
            .await
            .map_err(ServiceError::from)?;
        let has_more = entries.len() as u64 > page_size;
        entries.truncate(usize::try_from(page_size).unwrap_or(usize::MAX));
        let next_page_token = match entries.last() {
            Some(last) if has_more => encode_page_token(last.account_seq),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListAccountEntriesResponse {
            entries: entries.iter().map(entry_to_proto).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(name = "ledger.deposit", skip_all)]
    async fn deposit(
        &self,
        request: Request<pb::DepositRequest>,
    ) -> Result<Response<pb::DepositResponse>, Status> {
        let principal = self.caller(&request).await?;
        let body = request.get_ref();
        let transfer = self
            .operator_posting(
                &principal,
                TransferKind::Deposit,
                OperatorPosting {
                    account_id: &body.account_id,
                    amount_minor: body.amount_minor,
                    currency: &body.currency,
                    reference: &body.reference,
                    idempotency_key: &body.idempotency_key,
                },
            )
            .await?;
        tracing::info!(transfer_id = %transfer.transfer_id, "deposit posted");
        Ok(Response::new(pb::DepositResponse {
            transfer: Some(transfer_to_proto(&transfer)),
        }))
    }

    #[tracing::instrument(name = "ledger.withdraw", skip_all)]
    async fn withdraw(
        &self,
        request: Request<pb::WithdrawRequest>,
    ) -> Result<Response<pb::WithdrawResponse>, Status> {
        let principal = self.caller(&request).await?;
        let body = request.get_ref();
        let transfer = self
            .operator_posting(
                &principal,
                TransferKind::Withdrawal,
                OperatorPosting {
                    account_id: &body.account_id,
                    amount_minor: body.amount_minor,
                    currency: &body.currency,
                    reference: &body.reference,
                    idempotency_key: &body.idempotency_key,
                },
            )
            .await?;
        tracing::info!(transfer_id = %transfer.transfer_id, "withdrawal posted");
        Ok(Response::new(pb::WithdrawResponse {
            transfer: Some(transfer_to_proto(&transfer)),
        }))
    }

    #[tracing::instrument(name = "ledger.reverse_transfer", skip_all)]
    async fn reverse_transfer(
        &self,
        request: Request<pb::ReverseTransferRequest>,
    ) -> Result<Response<pb::ReverseTransferResponse>, Status> {
        let principal = self.caller(&request).await?;
        principal.require_operator()?;
        let body = request.into_inner();
        let original_id = TransferId::parse(&body.transfer_id).map_err(ServiceError::from)?;
        let idempotency_key =
            IdempotencyKey::parse(&body.idempotency_key).map_err(ServiceError::from)?;
        let original = self
            .store
            .transfer(original_id)
            .await
            .map_err(ServiceError::from)?
            .ok_or_else(|| ServiceError::from(LedgerError::TransferNotFound))?;
        if original.kind == TransferKind::Reversal {
            return Err(ServiceError::invalid("a reversal cannot itself be reversed").into());
        }
        // Only money that moved can move back.
        match original.status() {
            HoldState::Posted => {}
            state => return Err(ServiceError::from(LedgerError::HoldNotPending(state)).into()),
        }
        let reason = body.reason.trim();
        let description = if reason.is_empty() {
            format!("reversal of {original_id}")
        } else {
            reason.to_owned()
        };
        let movement = Movement {
            kind: TransferKind::Reversal,
            from_account_id: original.to_account_id,
            to_account_id: original.from_account_id,
            amount: PositiveAmount::parse(original.amount_minor).map_err(|_| {
                ServiceError::internal(&"stored transfer with a non-positive amount")
            })?,
            currency: original.currency,
            description: Description::parse(&description).map_err(ServiceError::from)?,
            reverses_transfer_id: Some(original_id),
        };
        let posting = PostingRequest::movement(movement, None, principal.scope(), idempotency_key);
        let transfer = self.post(posting).await?;
        tracing::info!(transfer_id = %transfer.transfer_id, reverses = %original_id, "reversal posted");
        Ok(Response::new(pb::ReverseTransferResponse {
            transfer: Some(transfer_to_proto(&transfer)),
        }))
    }

    #[tracing::instrument(name = "ledger.post_pending_transfer", skip_all)]
    async fn post_pending_transfer(
        &self,
        request: Request<pb::PostPendingTransferRequest>,
    ) -> Result<Response<pb::PostPendingTransferResponse>, Status> {
        let principal = self.caller(&request).await?;
        let body = request.into_inner();
        let hold_id = TransferId::parse(&body.transfer_id).map_err(ServiceError::from)?;
        let amount = match body.amount_minor {
            0 => None,
            minor => Some(
                PositiveAmount::parse(minor)
                    .map_err(|error| ServiceError::invalid(error.to_string()))?,
            ),
        };
        let posting = self.resolution(
            &principal,
            Action::PostHold { hold_id, amount },
            &body.idempotency_key,
        )?;
        let transfer = self.post(posting).await?;
        tracing::info!(transfer_id = %transfer.transfer_id, "hold posted");
        Ok(Response::new(pb::PostPendingTransferResponse {
            transfer: Some(transfer_to_proto(&transfer)),
        }))
    }

    #[tracing::instrument(name = "ledger.void_pending_transfer", skip_all)]
    async fn void_pending_transfer(
        &self,
        request: Request<pb::VoidPendingTransferRequest>,
    ) -> Result<Response<pb::VoidPendingTransferResponse>, Status> {
        let principal = self.caller(&request).await?;
        let body = request.into_inner();
        let hold_id = TransferId::parse(&body.transfer_id).map_err(ServiceError::from)?;
        let posting = self.resolution(
            &principal,
            Action::VoidHold { hold_id },
            &body.idempotency_key,
        )?;
        let transfer = self.post(posting).await?;
        tracing::info!(transfer_id = %transfer.transfer_id, "hold voided");
        Ok(Response::new(pb::VoidPendingTransferResponse {
            transfer: Some(transfer_to_proto(&transfer)),
        }))
    }

    #[tracing::instrument(name = "ledger.list_holds", skip_all)]
    async fn list_holds(
        &self,
        request: Request<pb::ListHoldsRequest>,
    ) -> Result<Response<pb::ListHoldsResponse>, Status> {
        let principal = self.caller(&request).await?;
        let body = request.into_inner();
        let account_id = AccountId::parse(&body.account_id).map_err(ServiceError::from)?;
        let page_size = parse_page_size(body.page_size)?;
        let before = parse_holds_token(&body.page_token)?;
        self.visible_account(&principal, account_id).await?;
        let mut holds = self
            .store
            .pending_holds(account_id, bank_kit::time::now(), before, page_size + 1)
            .await
            .map_err(ServiceError::from)?;
        let has_more = holds.len() as u64 > page_size;
        holds.truncate(usize::try_from(page_size).unwrap_or(usize::MAX));
        let next_page_token = match holds.last() {
            Some(last) if has_more => encode_holds_token(last),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListHoldsResponse {
            holds: holds
                .iter()
                .map(|hold| transfer_to_proto(&hold.to_transfer()))
                .collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(name = "ledger.create_transfer_batch", skip_all)]
    async fn create_transfer_batch(
        &self,
        request: Request<pb::CreateTransferBatchRequest>,
    ) -> Result<Response<pb::CreateTransferBatchResponse>, Status> {
        let principal = self.caller(&request).await?;
        let user_id = principal.require_user()?.to_owned();
        let body = request.into_inner();
        if body.transfers.is_empty() || body.transfers.len() > MAX_BATCH {
            return Err(ServiceError::invalid("a batch holds 1 to 100 transfers").into());
        }
        let idempotency_key =
            IdempotencyKey::parse(&body.idempotency_key).map_err(ServiceError::from)?;
        let mut items = Vec::with_capacity(body.transfers.len());
        let mut malformed = Vec::new();
        for (index, item) in body.transfers.iter().enumerate() {
            match parse_movement(
                &item.from_account_id,
                &item.to_account_id,
                item.amount_minor,
                &item.currency,
                &item.description,
            ) {
                Ok(movement) => items.push(movement),
                Err(error) => malformed.push(pb::TransferBatchError {
                    index: i32::try_from(index).unwrap_or(i32::MAX),
                    code: error.code.as_str().to_owned(),
                    detail: error.message,
                }),
            }
        }
        if let Some(first) = malformed.first() {
            let message = format!("transfer {} of the batch: {}", first.index, first.detail);
            return Err(batch_error_status(
                bank_kit::ErrorCode::InvalidArgument,
                &message,
                malformed,
            ));
        }
        let posting = PostingRequest {
            action: Action::Batch(items),
            required_owner: Some(user_id),
            scope: principal.scope(),
            idempotency_key,
        };
        let transfers = self.post_batch(posting).await?;
        tracing::info!(transfers = transfers.len(), "batch posted");
        Ok(Response::new(pb::CreateTransferBatchResponse {
            transfers: transfers.iter().map(transfer_to_proto).collect(),
        }))
    }

    #[tracing::instrument(name = "ledger.verify_ledger", skip_all)]
    async fn verify_ledger(
        &self,
        request: Request<pb::VerifyLedgerRequest>,
    ) -> Result<Response<pb::VerifyLedgerResponse>, Status> {
        let principal = self.caller(&request).await?;
        principal.require_operator()?;
        let report = self.store.verify().await.map_err(ServiceError::from)?;
        if !report.mismatches.is_empty() {
            tracing::error!(
                mismatches = report.mismatches.len(),
                "ledger verification found mismatches"
            );
        }
        Ok(Response::new(pb::VerifyLedgerResponse {
            ok: report.mismatches.is_empty(),
            accounts_checked: report.accounts_checked,
            entries_checked: report.entries_checked,
            mismatches: report
                .mismatches
                .into_iter()
                .map(|mismatch| pb::LedgerMismatch {
                    account_id: mismatch.account_id,
                    kind: mismatch.kind.to_owned(),
                    detail: mismatch.detail,
                })
                .collect(),
        }))
    }

    #[tracing::instrument(name = "ledger.open_ledger_account", skip_all)]
    async fn open_ledger_account(
        &self,
        request: Request<pb::OpenLedgerAccountRequest>,
    ) -> Result<Response<pb::OpenLedgerAccountResponse>, Status> {
        let principal = self.caller(&request).await?;
        principal.require_service(ACCOUNT_SERVICE)?;
        let body = request.into_inner();
        let account_id = AccountId::parse_customer(&body.account_id).map_err(ServiceError::from)?;
        let owner_id = uuid::Uuid::try_parse(&body.owner_id)
            .map_err(|_| ServiceError::invalid("owner id must be a UUID"))?;
        let currency = Currency::parse_supported(&body.currency)
            .map_err(|error| ServiceError::invalid(error.to_string()))?;
        let account = self
            .store
            .open_account(account_id, &owner_id.to_string(), currency)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::OpenLedgerAccountResponse {
            account_id: account.account_id.to_string(),
            status: status_to_proto(account.status) as i32,
            status_version: account.status_version,
        }))
    }

    #[tracing::instrument(name = "ledger.set_ledger_account_status", skip_all)]
    async fn set_ledger_account_status(
        &self,
        request: Request<pb::SetLedgerAccountStatusRequest>,
    ) -> Result<Response<pb::SetLedgerAccountStatusResponse>, Status> {
        let principal = self.caller(&request).await?;
        principal.require_service(ACCOUNT_SERVICE)?;
        let body = request.into_inner();
        let account_id = AccountId::parse(&body.account_id).map_err(ServiceError::from)?;
        let status = match pb::LedgerAccountStatus::try_from(body.status) {
            Ok(pb::LedgerAccountStatus::Active) => AccountStatus::Active,
            Ok(pb::LedgerAccountStatus::Frozen) => AccountStatus::Frozen,
            Ok(pb::LedgerAccountStatus::Closed) => AccountStatus::Closed,
            Ok(pb::LedgerAccountStatus::Unspecified) | Err(_) => {
                return Err(
                    ServiceError::invalid("status must be ACTIVE, FROZEN or CLOSED").into(),
                );
            }
        };
        let account = self
            .store
            .set_status(account_id, status, body.expected_status_version)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::SetLedgerAccountStatusResponse {
            account_id: account.account_id.to_string(),
            status: status_to_proto(account.status) as i32,
            status_version: account.status_version,
        }))
    }
}

/// The currency of a posting: any well-formed code. One that the accounts do not
/// hold (even one the bank does not support) is a currency mismatch, told by the
/// posting once the accounts were found, like any other.
fn parse_currency(raw: &str) -> Result<Currency, ServiceError> {
    Currency::parse(raw).map_err(|error| ServiceError::invalid(error.to_string()))
}

fn parse_page_size(raw: i32) -> Result<u64, ServiceError> {
    match raw {
        0 => Ok(DEFAULT_PAGE_SIZE),
        1.. if raw as u64 <= MAX_PAGE_SIZE => Ok(raw as u64),
        _ => Err(ServiceError::invalid("page_size must be between 1 and 100")),
    }
}

const PAGE_TOKEN_PREFIX: &str = "entries-before:";

fn encode_page_token(account_seq: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{PAGE_TOKEN_PREFIX}{account_seq}"))
}

fn parse_page_token(raw: &str) -> Result<Option<i64>, ServiceError> {
    if raw.is_empty() {
        return Ok(None);
    }
    let invalid = || ServiceError::invalid("page_token is not valid");
    let decoded = URL_SAFE_NO_PAD.decode(raw).map_err(|_| invalid())?;
    let text = String::from_utf8(decoded).map_err(|_| invalid())?;
    let seq: i64 = text
        .strip_prefix(PAGE_TOKEN_PREFIX)
        .and_then(|number| number.parse().ok())
        .ok_or_else(invalid)?;
    if seq < 1 {
        return Err(invalid());
    }
    Ok(Some(seq))
}

const HOLDS_TOKEN_PREFIX: &str = "holds-before:";

fn encode_holds_token(hold: &Hold) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "{HOLDS_TOKEN_PREFIX}{}:{}",
        hold.created_at.timestamp_micros(),
        hold.hold_id
    ))
}

fn parse_holds_token(
    raw: &str,
) -> Result<Option<(chrono::DateTime<chrono::Utc>, TransferId)>, ServiceError> {
    if raw.is_empty() {
        return Ok(None);
    }
    let invalid = || ServiceError::invalid("page_token is not valid");
    let decoded = URL_SAFE_NO_PAD.decode(raw).map_err(|_| invalid())?;
    let text = String::from_utf8(decoded).map_err(|_| invalid())?;
    let (micros, id) = text
        .strip_prefix(HOLDS_TOKEN_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .ok_or_else(invalid)?;
    let created_at = micros
        .parse::<i64>()
        .ok()
        .and_then(chrono::DateTime::from_timestamp_micros)
        .ok_or_else(invalid)?;
    let hold_id = TransferId::parse(id).map_err(|_| invalid())?;
    Ok(Some((created_at, hold_id)))
}

fn status_to_proto(status: AccountStatus) -> pb::LedgerAccountStatus {
    match status {
        AccountStatus::Active => pb::LedgerAccountStatus::Active,
        AccountStatus::Frozen => pb::LedgerAccountStatus::Frozen,
        AccountStatus::Closed => pb::LedgerAccountStatus::Closed,
    }
}

fn transfer_to_proto(transfer: &Transfer) -> pb::Transfer {
    let kind = match transfer.kind {
        TransferKind::Transfer => pb::TransferKind::Transfer,
        TransferKind::Deposit => pb::TransferKind::Deposit,
        TransferKind::Withdrawal => pb::TransferKind::Withdrawal,
        TransferKind::Reversal => pb::TransferKind::Reversal,
    };
    pb::Transfer {
        transfer_id: transfer.transfer_id.to_string(),
        from_account_id: transfer.from_account_id.to_string(),
        to_account_id: transfer.to_account_id.to_string(),
        amount_minor: transfer.amount_minor,
        currency: transfer.currency.to_string(),
        status: match transfer.status() {
            HoldState::Pending => pb::TransferStatus::Pending,
            HoldState::Posted => pb::TransferStatus::Posted,
            HoldState::Voided => pb::TransferStatus::Voided,
            HoldState::Expired => pb::TransferStatus::Expired,
        } as i32,
        kind: kind as i32,
        description: transfer.description.clone(),
        reverses_transfer_id: transfer
            .reverses_transfer_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
        created_at: to_rfc3339(transfer.created_at),
        held_amount_minor: transfer.hold.as_ref().map(|hold| hold.held_minor),
        expires_at: transfer
            .hold
            .as_ref()
            .map(|hold| to_rfc3339(hold.expires_at))
            .unwrap_or_default(),
        resolved_at: transfer
            .hold
            .as_ref()
            .and_then(|hold| hold.resolved_at)
            .map(to_rfc3339)
            .unwrap_or_default(),
    }
}

fn entry_to_proto(entry: &Entry) -> pb::Entry {
    pb::Entry {
        transfer_id: entry.transfer_id.to_string(),
        amount_minor: entry.amount_minor,
        balance_after_minor: entry.balance_after_minor,
        currency: entry.currency.to_string(),
        counterparty_account_id: entry.counterparty_account_id.to_string(),
        description: entry.description.clone(),
        created_at: to_rfc3339(entry.created_at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_tampering() {
        let token = encode_page_token(42);
        assert_eq!(parse_page_token(&token).ok(), Some(Some(42)));
        assert!(parse_page_token("garbage!").is_err());
        assert!(parse_page_token(&URL_SAFE_NO_PAD.encode("entries-before:-1")).is_err());
        assert_eq!(parse_page_token("").ok(), Some(None));
    }

    #[test]
    fn page_size_is_bounded() {
        assert_eq!(parse_page_size(0).ok(), Some(DEFAULT_PAGE_SIZE));
        assert_eq!(parse_page_size(100).ok(), Some(100));
        assert!(parse_page_size(101).is_err());
        assert!(parse_page_size(-1).is_err());
    }
}
