//! The `klio` command: the Klio Server and its command-line client.

fn main() -> std::process::ExitCode {
    klio::main()
}
