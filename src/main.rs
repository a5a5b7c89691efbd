//! The `maitred` command line (DESIGN §2): parse arguments, set up logging, run one
//! command, turn errors into messages and exit codes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use maitred::app::LogLevelHook;
use maitred::inherit::Inherited;
use maitred::service;
use maitred::upgrade::{self, Handed, Upgrader};

use maitred::app::Daemon;
use maitred::config::{self, Config, LogFormat};
use maitred::reload_report::ReloadReport;

#[derive(Parser, Debug)]
#[command(
    name = "maitred",
    version,
    about = "An HTTP load balancer: stateless and sticky balancing, one TOML file",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file (for `run`, the default command).
    #[arg(short, long, value_name = "PATH", default_value = "maitred.toml")]
    config: PathBuf,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon.
    Run {
        /// Config file.
        #[arg(short, long, value_name = "PATH", default_value = "maitred.toml")]
        config: PathBuf,
    },
    /// Validate a config, print a summary; with --against, what changing from OLD costs.
    Check {
        /// Config file to check.
        #[arg(short, long, value_name = "PATH", default_value = "maitred.toml")]
        config: PathBuf,
        /// The config in production now: report what going from it to --config changes.
        #[arg(long, value_name = "OLD")]
        against: Option<PathBuf>,
        /// Also resolve each pool's discovery name once and print what DNS gives.
        #[arg(long)]
        resolve: bool,
    },
    /// Three demo backends and a balancer in front of them; no setup needed.
    Demo,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => run(&cli.config),
        Some(Command::Run { config }) => run(&config),
        Some(Command::Check {
            config,
            against,
            resolve,
        }) => check(&config, against.as_deref(), resolve),
        Some(Command::Demo) => demo(),
    }
}

/// Sets up logging to stderr at `level` (or `RUST_LOG`), as text or one JSON object a
/// line; returns the hook that applies a reloaded `server.log_level`, or `None` when
/// `RUST_LOG` rules.
fn init_logging(level: &str, format: LogFormat) -> Option<LogLevelHook> {
    let from_env = EnvFilter::try_from_default_env().ok();
    let env_rules = from_env.is_some();
    let filter = from_env
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let text = (format == LogFormat::Text)
        .then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr));
    // Flattened: `timestamp`, `level`, `message`, the event's fields and `target` at
    // the top level of each object, as log shippers index them.
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
    });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .try_init();
    if env_rules {
        return None;
    }
    Some(Box::new(move |level: &str| {
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    }))
}

fn control_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("maitred-control")
        .build()
}

fn run(path: &Path) -> ExitCode {
    // Before anything else: the old process of an upgrade waits for this, and the
    // service manager's variables are read (and removed) before any thread starts.
    let upgrader = Upgrader::from_start();
    let handed = match upgrade::take_handover() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("maitred: upgrade: {e}");
            return ExitCode::FAILURE;
        }
    };
    let activated = Inherited::from_service_manager();
    let cfg = match config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(2);
        }
    };
    let log_hook = init_logging(&cfg.server.log_level, cfg.server.log_format);
    let path = path.to_path_buf();
    let start = async move {
        let (inherited, state, channel) = match handed {
            Some(h) => {
                let (sockets, state, channel) = h.into_parts();
                (Inherited::new(sockets), Some(state), Some(channel))
            }
            None => (activated, None, None),
        };
        let daemon = Daemon::start_with(cfg, Some(path.clone()), &inherited, state.as_ref())
            .await
            .map_err(|e| format!("maitred: {e}"))?;
        if let Some(hook) = log_hook {
            daemon.set_log_level_hook(hook);
        }
        tracing::info!(config = %path.display(), "maitred {} running", env!("CARGO_PKG_VERSION"));
        match (channel, state) {
            (Some(channel), Some(state)) => {
                service::ready_as_main();
                // The old process gone already (killed, crashed) is no reason to stop
                // serving: this one holds the sockets now.
                if let Err(e) = Handed::report_ready(channel, state.from_pid) {
                    tracing::warn!(error = %e, "upgrade: cannot tell the previous process that this one serves");
                }
            }
            _ => service::ready(),
        }
        service::spawn_watchdog();
        Ok(daemon)
    };
    on_control_runtime(start, Some(upgrader))
}

/// Starts a daemon on the control runtime, then serves signals until it has shut down.
fn on_control_runtime(
    start: impl std::future::Future<Output = Result<std::sync::Arc<Daemon>, String>>,
    upgrader: Option<Upgrader>,
) -> ExitCode {
    let rt = match control_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("maitred: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let signals = match maitred::signals::Signals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("maitred: signals: {e}");
                return ExitCode::FAILURE;
            }
        };
        let daemon = match start.await {
            Ok(d) => d,
            Err(message) => {
                eprintln!("{message}");
                return ExitCode::FAILURE;
            }
        };
        match maitred::signals::run(daemon, signals, upgrader).await {
            Ok(0) => ExitCode::SUCCESS,
            Ok(code) => ExitCode::from(code as u8),
            Err(e) => {
                eprintln!("maitred: signals: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn print_summary(cfg: &Config) {
    for p in &cfg.pools {
        let discovery = p
            .discovery
            .as_ref()
            .map(|d| format!(", discovery {}", d.target))
            .unwrap_or_default();
        let protocol = match p.protocol {
            maitred::config::UpstreamProtocol::Http1 => String::new(),
            other => format!(", {}", other.name()),
        };
        println!(
            "pool {}: {}, {} backend{}{protocol}{discovery}",
            p.name,
            p.balancer.name(),
            p.backends.len(),
            if p.backends.len() == 1 { "" } else { "s" }
        );
    }
}

/// `check --resolve`: asks each discovery name once and prints the answer; false when
/// some answer failed or was empty.
fn resolve_all(cfg: &Config) -> bool {
    let rt = match control_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("maitred: cannot start runtime: {e}");
            return false;
        }
    };
    let mut all_found = true;
    for p in &cfg.pools {
        let Some(d) = &p.discovery else { continue };
        let answer = match maitred::discovery::Resolver::new(d) {
            Ok(r) => rt.block_on(r.resolve()),
            Err(e) => maitred::discovery::Answer::Failed(e.to_string()),
        };
        let line = maitred::discovery::describe(&answer);
        println!("pool {}: {}: {line}", p.name, d.target);
        all_found &= matches!(answer, maitred::discovery::Answer::Records { .. });
    }
    all_found
}

fn check(path: &Path, against: Option<&Path>, resolve: bool) -> ExitCode {
    let new = config::load(path);
    let old = against.map(config::load);
    let mut failed = false;
    if let Err(e) = &new {
        eprintln!("{e}");
        failed = true;
    }
    if let Some(Err(e)) = &old {
        eprintln!("{e}");
        failed = true;
    }
    if failed {
        return ExitCode::from(2);
    }
    let Ok(new) = new else {
        return ExitCode::from(2);
    };
    print_summary(&new);
    for w in new.warnings() {
        println!("warning: {w}");
    }
    if resolve && !resolve_all(&new) {
        return ExitCode::from(1);
    }
    let Some(Ok(old)) = old else {
        println!("{}: ok", path.display());
        return ExitCode::SUCCESS;
    };
    match ReloadReport::between(&old, &new) {
        Ok(report) => {
            println!("{}", report.summary_line());
            for line in report.sticky_lines() {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("maitred: {e}");
            ExitCode::from(2)
        }
    }
}

fn demo() -> ExitCode {
    let _ = init_logging("info", LogFormat::Text);
    on_control_runtime(
        async {
            let demo = maitred::demo::start()
                .await
                .map_err(|e| format!("maitred demo: {e}"))?;
            maitred::demo::print_banner(&demo);
            Ok(demo.daemon)
        },
        None,
    )
}
