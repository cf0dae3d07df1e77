//! `bank-ledger`: the ledger service binary, configured only by the environment;
//! `bank-ledger healthcheck` probes a running one (see `bank_kit::probe`);
//! `bank-ledger migrate` applies the migrations and exits.

use bank_kit::{config, grpc, probe, telemetry};

/// mimalloc in place of the system allocator: under load, glibc's malloc and
/// free (mostly their slow paths: fastbin consolidation and memory freed on
/// another thread than the one that allocated it) were a fifth of the ledger's
/// CPU. With huge pages off (`bank_kit::memory`) its peak RSS stays within
/// budget: about 40 MiB under load, against 26 MiB on the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    bank_kit::memory::use_small_pages();
    let env = config::Env::from_process();
    if probe::requested() {
        probe::finish(
            probe::grpc_serving(&env, bank_ledger::LISTEN.0, bank_ledger::LISTEN.1).await,
        );
    }
    let config =
        bank_ledger::Config::from_env(&env).unwrap_or_else(|error| config::exit_with(&error));
    let _telemetry =
        telemetry::init(&env, "bank-ledger").unwrap_or_else(|error| config::exit_with(&error));
    if std::env::args().nth(1).as_deref() == Some("migrate") {
        bank_ledger::migrate(&config)
            .await
            .unwrap_or_else(|error| config::exit_on_start_failure(&error));
        tracing::info!("migrations applied");
        return Ok(());
    }
    let app = bank_ledger::build(&config)
        .await
        .unwrap_or_else(|error| config::exit_on_start_failure(&error));
    tracing::info!(addr = %app.local_addr()?, "ledger listening");
    app.run_until_stopped(grpc::shutdown_signal()).await?;
    Ok(())
}
