//! The command line: flags, printing configurations, logging setup, exit codes.
//!
//! The only module that prints. Config problems are reported on stderr with exit code 64
//! (`EX_USAGE`) before the runtime starts.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, Parser};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Where KubeEdge keeps edgecore.yaml.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/kubeedge/config/edgecore.yaml";

/// Exit code for a configuration the operator must fix (`EX_USAGE`).
const EXIT_BAD_CONFIG: u8 = 64;
/// Exit code when the printed configuration could not be produced.
const EXIT_SOFTWARE: u8 = 70;

/// edgecore: the KubeEdge edge agent (metamanager, store, cloud link).
#[derive(Debug, Parser)]
#[command(name = "edgecore", version, about)]
pub struct Cli {
    /// Path of edgecore.yaml.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Print the full default configuration (every key) and exit.
    #[arg(long, conflicts_with = "minconfig")]
    pub defaultconfig: bool,
    /// Print the short configuration and exit.
    #[arg(long)]
    pub minconfig: bool,
    /// More logging: -v debug, -vv trace. RUST_LOG, when set, takes precedence.
    #[arg(short, action = ArgAction::Count)]
    pub verbose: u8,
}

/// Parses the process arguments and runs edgecore. The body of `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.defaultconfig || cli.minconfig {
        return print_config(cli.minconfig);
    }
    init_tracing(cli.verbose);
    let config = match load_config(&cli.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("edgecore")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edgecore: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(async {
        crate::app::run(
            config,
            Some(cli.config.clone()),
            crate::app::shutdown_signal(),
        )
        .await
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "edgecore failed");
            eprintln!("edgecore: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// Printing the configuration is this command's output.
#[allow(clippy::print_stdout)]
fn print_config(minimal: bool) -> ExitCode {
    let node = node_name();
    let text = if minimal {
        config::minimal_yaml(&node)
    } else {
        config::to_yaml(&config::default_config(&node))
    };
    match text {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("edgecore: {e}");
            ExitCode::from(EXIT_SOFTWARE)
        }
    }
}

/// Loads and validates; every problem goes to stderr, unknown keys become warnings.
fn load_config(path: &std::path::Path) -> Result<config::EdgeCoreConfig, ExitCode> {
    let loaded = config::load(path).map_err(|e| {
        eprintln!("edgecore: {e}");
        ExitCode::from(EXIT_BAD_CONFIG)
    })?;
    for w in &loaded.warnings {
        tracing::warn!(path = %path.display(), "{w}");
    }
    loaded.config.validate().map_err(|e| {
        eprintln!("edgecore: {}: {e}", path.display());
        ExitCode::from(EXIT_BAD_CONFIG)
    })?;
    let inert = config::inert(&loaded.config);
    if !inert.modules.is_empty() {
        tracing::warn!(
            path = %path.display(),
            modules = %inert.modules.join(", "),
            "modules enabled in the config that this edgecore does not run; the cloud's messages for them are dropped"
        );
    }
    if !inert.keys.is_empty() {
        tracing::warn!(
            path = %path.display(),
            keys = %inert.keys.join(", "),
            "keys accepted but with no effect in this edgecore (KubeEdge's edgecore would use them)"
        );
    }
    Ok(loaded.config)
}

/// The node name KubeEdge's printed configurations use: this host's name, lower-case.
fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_lowercase())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "edge-node".to_owned())
}

/// The log filter: RUST_LOG's `level` and `target=level` directives when it is set and valid
/// (an invalid one is reported and ignored), else `default_level`. `Targets`, not EnvFilter:
/// EnvFilter's span and field filters bring a regex engine into the binary.
fn log_filter(rust_log: Option<&str>, default_level: &str) -> Targets {
    let default_filter = || default_level.parse::<Targets>().unwrap_or_default();
    match rust_log {
        Some(spec) if !spec.trim().is_empty() => spec.parse::<Targets>().unwrap_or_else(|e| {
            eprintln!("edgecore: ignoring RUST_LOG={spec:?}: {e}");
            default_filter()
        }),
        _ => default_filter(),
    }
}

/// Logs to stderr: no colours unless stderr is a terminal, and no timestamps under journald
/// (which stamps lines itself).
fn init_tracing(verbose: u8) {
    let default_level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref(), default_level);
    let builder = tracing_subscriber::fmt()
        .with_max_level(LevelFilter::TRACE)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let installed = if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().finish().with(filter).try_init()
    } else {
        builder.finish().with(filter).try_init()
    };
    if let Err(e) = installed {
        eprintln!("edgecore: logging is not available: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn rust_log_sets_levels_per_module_and_a_bad_one_falls_back() {
        use tracing::Level;
        let f = log_filter(Some("warn,edgehub=debug"), "info");
        assert!(f.would_enable("edgehub::link", &Level::DEBUG));
        assert!(!f.would_enable("edgehub::link", &Level::TRACE));
        assert!(!f.would_enable("edgecore::metamanager", &Level::INFO));
        assert!(f.would_enable("edgecore::metamanager", &Level::WARN));
        let f = log_filter(Some("edgehub=lots"), "info");
        assert!(f.would_enable("edgecore", &Level::INFO));
        assert!(!f.would_enable("edgecore", &Level::DEBUG));
        let f = log_filter(None, "debug");
        assert!(f.would_enable("edgecore", &Level::DEBUG));
        assert!(!f.would_enable("edgecore", &Level::TRACE));
    }

    #[test]
    fn flags_parse() {
        Cli::command().debug_assert();
        let c = Cli::parse_from(["edgecore"]);
        assert_eq!(c.config, PathBuf::from(DEFAULT_CONFIG_PATH));
        let c = Cli::parse_from(["edgecore", "--config", "/x.yaml", "-vv"]);
        assert_eq!((c.config, c.verbose), (PathBuf::from("/x.yaml"), 2));
        assert!(Cli::try_parse_from(["edgecore", "--defaultconfig", "--minconfig"]).is_err());
    }

    #[test]
    fn node_name_is_never_empty() {
        assert!(!node_name().is_empty());
    }
}
