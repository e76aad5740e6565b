//! `ampoule check [--boot] [--json]`.

use ampoule_runtime::check;
use ampoule_runtime::Config;

use super::EXIT_HOST;

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Also boot a sandbox and report the agent's answer and the boot time.
    #[arg(long)]
    pub boot: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(config: &Config, args: CheckArgs) -> i32 {
    let mut report = check::host_report(config);
    tracing::info!(backend = ?report.backend, reason = %report.reason, "backend choice");
    if args.boot {
        check::boot_report(config, &mut report).await;
    }
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("ampoule check: cannot encode the report: {e}");
                return 1;
            }
        }
    } else {
        print!("{}", report.to_text());
    }
    if report.ok {
        0
    } else {
        if let Some(e) = &report.error {
            eprintln!("ampoule check: {e}");
        }
        EXIT_HOST
    }
}
