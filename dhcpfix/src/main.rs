use clap::Parser;

fn main() {
    let cli = dhcpfix::cli::Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(cli.default_log_filter()))
        .init();
    if let Err(e) = dhcpfix::cli::run(cli) {
        eprintln!("dhcpfix: error: {e}");
        std::process::exit(1);
    }
}
