//! Writes webhookd's man pages and shell completions into a directory, for
//! `scripts/package.sh`: `cargo run --example package-assets -- DIR`. They are generated from
//! the command-line definition itself, so no checked-in copy can drift from it.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: package-assets DIR");
        return ExitCode::from(2);
    };
    match webhookd::cli::package_assets(&dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("package-assets: {error:#}");
            ExitCode::FAILURE
        }
    }
}
