//! `bank-ledger`: the ledger service binary, configured only by the environment.

use bank_kit::{config, grpc, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = config::Env::from_process();
    let config =
        bank_ledger::Config::from_env(&env).unwrap_or_else(|error| config::exit_with(&error));
    let _telemetry =
        telemetry::init(&env, "bank-ledger").unwrap_or_else(|error| config::exit_with(&error));
    let app = bank_ledger::build(&config)
        .await
        .unwrap_or_else(|error| config::exit_on_start_failure(&error));
    tracing::info!(addr = %app.local_addr()?, "ledger listening");
    app.run_until_stopped(grpc::shutdown_signal()).await?;
    Ok(())
}
