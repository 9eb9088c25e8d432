//! The `switchboard` binary: parse, set up logging, run, and turn errors into exit codes.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use switchboard::Error;
use switchboard::cli::{Cli, Outcome};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // rmcp logs every request at info; keep the MCP server's stderr for what matters. The
    // bench's thousands of clients would log each reconnection; its report is what matters.
    #[cfg(feature = "bench")]
    let bench = matches!(cli.command, switchboard::cli::Command::Bench(_));
    #[cfg(not(feature = "bench"))]
    let bench = false;
    let default = if bench {
        "info,rmcp=warn,switchboard::client=warn,async_nats=warn"
    } else {
        // async-nats logs every reconnect attempt at info; the backbone says what matters.
        "info,rmcp=warn,async_nats=warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHBOARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("switchboard: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(switchboard::cli::run(cli));
    // Dropping the runtime would wait for its blocking threads, and one of them may sit in a
    // read of stdin that never returns (`switchboard mcp` stopped by a signal while its client
    // keeps stdin open). Everything that matters was awaited above; give the rest a moment.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(Outcome::Done | Outcome::StdoutClosed) => ExitCode::SUCCESS,
        Ok(Outcome::TimedOut) => ExitCode::from(3),
        Err(e) => {
            eprintln!("switchboard: {e}");
            match e {
                Error::Config(_) | Error::Invalid(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}
