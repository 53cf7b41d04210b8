//! The `patd` binary: the command line over the library (see `cli/`).

use std::process::ExitCode;

use clap::Parser;

#[macro_use]
mod cli;

/// mimalloc: the token cache is a million small allocations, which glibc's malloc
/// stores with ~25% more resident memory (size-class rounding, per-thread arenas).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            note!("patd: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            note!("patd: {err}");
            // Client commands have exit codes of their own (see the README).
            err.downcast_ref::<cli::client::ClientError>()
                .map_or(ExitCode::FAILURE, |err| ExitCode::from(err.exit_code))
        }
    }
}
