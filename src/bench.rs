//! `switchboard bench`: the load generator. (Filled in below.)

use std::process::ExitCode;

use clap::Args;

use crate::cli::Global;
use crate::error::Result;

/// `switchboard bench` flags.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Node to measure; without it, bench starts its own node on a temporary data dir.
    #[arg(long = "target", value_name = "URL")]
    pub target: Option<String>,
}

/// Runs the benchmark.
pub async fn run(_g: &Global, _a: BenchArgs) -> Result<ExitCode> {
    Ok(ExitCode::SUCCESS)
}
