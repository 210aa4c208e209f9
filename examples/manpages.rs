//! Writes the man pages of the three programs (roff, from their `--help`
//! definitions) into `packaging/man/`, where the .deb takes them from:
//!
//! ```text
//! cargo run --example manpages
//! ```
//!
//! `tests/packaging.rs` fails when the committed pages differ from what
//! this writes, so they never drift from the programs.

use clap::CommandFactory;
use std::path::Path;

fn main() -> std::io::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/man");
    std::fs::create_dir_all(&dir)?;
    for (name, page) in rcache_man_pages() {
        std::fs::write(dir.join(&name), page)?;
        println!("wrote packaging/man/{name}");
    }
    Ok(())
}

/// (file name, roff text) for each program.
fn rcache_man_pages() -> Vec<(String, Vec<u8>)> {
    [
        rcache::daemon::args::WorkerArgs::cli(),
        rcache::daemon::args::OrchestratorArgs::cli(),
        rcache::cli::Cli::command(),
    ]
    .into_iter()
    .map(|cmd| {
        let name = format!("{}.1", cmd.get_name());
        let mut out = Vec::new();
        // Writing into a Vec cannot fail.
        let _ = clap_mangen::Man::new(cmd).render(&mut out);
        (name, out)
    })
    .collect()
}
