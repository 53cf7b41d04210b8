use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = patd::cli::Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("patd: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(patd::cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("patd: {err}");
            ExitCode::FAILURE
        }
    }
}
