//! `rcache`: the command-line client and `rcache local`; see `rcache::cli`.

#![forbid(unsafe_code)]

use clap::Parser;

fn main() {
    let cli = rcache::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rcache: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(rcache::cli::run(cli));
    std::process::exit(code);
}
