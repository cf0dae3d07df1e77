//! `bank-gateway`: the REST gateway binary, configured only by the environment;
//! `bank-gateway healthcheck` probes a running one (see `bank_kit::probe`).

use bank_kit::{config, grpc, probe, telemetry};

/// mimalloc in place of the system allocator: under load, glibc's malloc and
/// free were two fifths of the gateway's CPU, mostly their slow paths for
/// memory freed on another thread than the one that allocated it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    bank_kit::memory::use_small_pages();
    let env = config::Env::from_process();
    if probe::requested() {
        probe::finish(
            probe::http_ready(
                &env,
                bank_gateway::LISTEN.0,
                bank_gateway::LISTEN.1,
                "/readyz",
            )
            .await,
        );
    }
    let config =
        bank_gateway::Config::from_env(&env).unwrap_or_else(|error| config::exit_with(&error));
    let _telemetry = telemetry::init_as(&env, "bank-gateway", telemetry::Role::Edge)
        .unwrap_or_else(|error| config::exit_with(&error));
    let app = bank_gateway::build(&config)
        .await
        .unwrap_or_else(|error| config::exit_on_start_failure(&error));
    tracing::info!(addr = %app.local_addr()?, "gateway listening");
    app.run_until_stopped(grpc::shutdown_signal()).await?;
    Ok(())
}
