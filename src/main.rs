fn main() {
    std::process::exit(otel_forkcheck::cli::main());
}
