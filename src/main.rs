use clap::Parser;

fn main() {
    let cli = eduzz_kafka_bridge::cli::Cli::parse();
    std::process::exit(eduzz_kafka_bridge::cli::run(cli));
}
