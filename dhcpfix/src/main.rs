use clap::Parser;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = dhcpfix::cli::Cli::parse();
    if let Err(e) = dhcpfix::cli::run(cli) {
        eprintln!("dhcpfix: error: {e}");
        std::process::exit(1);
    }
}
