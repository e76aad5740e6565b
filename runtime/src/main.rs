//! `ampoule`: Ampoule's command line (an OCI runtime CLI with runc's commands,
//! plus `ampoule check`).

mod cli;

fn main() {
    std::process::exit(cli::main());
}
