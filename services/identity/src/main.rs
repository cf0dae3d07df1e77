//! `bank-identity`: the identity service binary, configured only by the environment;
//! `bank-identity healthcheck` probes a running one (see `bank_kit::probe`);
//! `bank-identity migrate` applies the migrations and exits.

use bank_kit::{config, grpc, probe, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    bank_kit::memory::use_small_pages();
    let env = config::Env::from_process();
    if probe::requested() {
        probe::finish(
            probe::grpc_serving(&env, bank_identity::LISTEN.0, bank_identity::LISTEN.1).await,
        );
    }
    let config =
        bank_identity::Config::from_env(&env).unwrap_or_else(|error| config::exit_with(&error));
    let _telemetry =
        telemetry::init(&env, "bank-identity").unwrap_or_else(|error| config::exit_with(&error));
    if std::env::args().nth(1).as_deref() == Some("migrate") {
        bank_identity::migrate(&config)
            .await
            .unwrap_or_else(|error| config::exit_on_start_failure(&error));
        tracing::info!("migrations applied");
        return Ok(());
    }
    let app = bank_identity::build(&config)
        .await
        .unwrap_or_else(|error| config::exit_on_start_failure(&error));
    tracing::info!(addr = %app.local_addr()?, "identity listening");
    app.run_until_stopped(grpc::shutdown_signal()).await?;
    Ok(())
}
