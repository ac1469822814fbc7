//! Writes the operator's CRDs to `deploy/crds/` (or, with `-`, to stdout). The test
//! `the_committed_crds_are_what_the_types_generate` fails while the committed files are
//! stale.

fn main() -> std::process::ExitCode {
    let yaml = klio_operator::crd_yaml();
    if std::env::args().nth(1).as_deref() == Some("-") {
        print!("{yaml}");
        return std::process::ExitCode::SUCCESS;
    }
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/crds/klio.io_servers.yaml"
    );
    match std::fs::write(path, yaml) {
        Ok(()) => {
            eprintln!("wrote {path}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("crdgen: cannot write {path}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
