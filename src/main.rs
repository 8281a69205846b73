//! The `shequ-chat` command: run the server, check a configuration, or mint a dev token.

use std::path::PathBuf;
use std::process::ExitCode;

use log::{LevelFilter, info, warn};

use async_signal::{Signal, Signals};
use futures_lite::StreamExt;
use shequ_chat::config::{Config, ConfigError, LOG_ENV};
use shequ_chat::{admin, auth, server};

const USAGE: &str = "\
shequ-chat: a WebSocket chat server for self-hosted community sites

Usage:
  shequ-chat --config PATH                 run the server
  shequ-chat --check-config --config PATH  check a configuration file and exit
  shequ-chat token --config PATH --sub ID [--name NAME] [--ttl SECS]
                                           print a token signed with the configured HS secret
{admin}  shequ-chat --help | --version

Environment:
  SHEQU_CHAT_JWT_SECRET  the JWT secret (wins over auth.secret and auth.secret_file)
  SHEQU_CHAT_API_KEY     the server API's key (wins over api.key and api.key_file)
  SHEQU_CHAT_LOG         the log level (wins over log_level)
";

fn usage() -> String {
    USAGE.replace("{admin}", admin::USAGE)
}

/// Default lifetime of a token from `shequ-chat token`.
const DEFAULT_TOKEN_TTL_SECS: u64 = 3600;

enum Command {
    Run { config: PathBuf },
    Check { config: PathBuf },
    Token { config: PathBuf, sub: String, name: Option<String>, ttl_secs: u64 },
    Admin { config: PathBuf, request: admin::Request },
    Help,
    Version,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Command, String> {
    let mut args = args.by_ref().peekable();
    if args.peek().map(String::as_str) == Some("admin") {
        args.next();
        let (mut config, mut rest) = (None, Vec::new());
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--config" | "-c" => config = args.next().map(PathBuf::from),
                _ => rest.push(arg),
            }
        }
        let config = config.ok_or("admin needs --config PATH")?;
        return Ok(Command::Admin { config, request: admin::parse(&rest)? });
    }
    let mut config = None;
    let mut check = false;
    let mut token = false;
    let mut sub = None;
    let mut name = None;
    let mut ttl_secs = DEFAULT_TOKEN_TTL_SECS;
    let mut first = true;
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().ok_or(format!("{flag} needs a value"));
        match arg.as_str() {
            "token" if first => token = true,
            "--config" | "-c" => config = Some(PathBuf::from(value("--config")?)),
            "--check-config" => check = true,
            "--sub" if token => sub = Some(value("--sub")?),
            "--name" if token => name = Some(value("--name")?),
            "--ttl" if token => {
                ttl_secs = value("--ttl")?.parse().map_err(|_| "--ttl takes whole seconds")?;
            }
            "--help" | "-h" => return Ok(Command::Help),
            "--version" | "-V" => return Ok(Command::Version),
            other => return Err(format!("unexpected argument {other:?}")),
        }
        first = false;
    }
    let config = config.ok_or("--config PATH is required")?;
    Ok(if token {
        Command::Token { config, sub: sub.ok_or("token needs --sub ID")?, name, ttl_secs }
    } else if check {
        Command::Check { config }
    } else {
        Command::Run { config }
    })
}

/// What `--check-config` adds for a production config that lets any site's pages connect (the
/// Debian package's config until it is edited).
const NO_ORIGINS_NOTE: &str = "note: allowed_origins is empty, so pages of any site can open \
    connections with a visitor's token; list your site's origin there";

/// Prints a line of the command's output. A reader that went away (`| head -1`) ends the output,
/// not the process with a panic, as `println!` would.
fn say(line: impl std::fmt::Display) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout(), "{line}");
}

fn main() -> ExitCode {
    let command = match parse_args(std::env::args().skip(1)) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("shequ-chat: {e}\n\n{}", usage());
            return ExitCode::from(2);
        }
    };
    let result = match command {
        Command::Help => {
            say(usage().trim_end());
            Ok(())
        }
        Command::Version => {
            say(format_args!("shequ-chat {}", env!("CARGO_PKG_VERSION")));
            Ok(())
        }
        Command::Check { config } => Config::load(&config).map(|c| {
            say(format_args!("{}: ok", config.display()));
            if c.allowed_origins.is_empty() && !c.dev_login {
                say(NO_ORIGINS_NOTE);
            }
        }),
        Command::Token { config, sub, name, ttl_secs } => Config::load(&config)
            .and_then(|c| auth::mint(&c.auth, &sub, name.as_deref(), ttl_secs))
            .map(say),
        Command::Run { config } => Config::load(&config).and_then(run),
        Command::Admin { config, request } => Config::load(&config).and_then(|c| {
            let lines = admin::run(&c, &request).map_err(|e| ConfigError(format!("admin: {e}")))?;
            lines.iter().for_each(say);
            Ok(())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shequ-chat: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> Result<(), ConfigError> {
    init_logging(&config);
    let listeners = server::bind(&config)
        .map_err(|e| ConfigError(format!("cannot listen on {}: {e}", config.listen)))?;
    info!("config: {}", config.redacted_json());
    raise_open_files_limit(&config)?;
    let signals = Signals::new([Signal::Term, Signal::Int])
        .map_err(|e| ConfigError(format!("cannot handle signals: {e}")))?;
    let shutdown = async move {
        let mut signals = signals;
        if let Some(Ok(signal)) = signals.next().await {
            info!("received {signal:?}");
        }
    };
    server::run(listeners, config, shutdown)
}

/// File descriptors the server wants beyond its client sockets: the listeners, the history
/// file, Redis, the log, and some room.
const SPARE_FDS: u64 = 64;

/// Raises the soft limit on open files to the hard limit (the soft one is often 1024, far below
/// `limits.max_connections`) and checks the limits against it. A `limits.max_connections` that
/// the descriptors cannot hold is refused: otherwise the server would start and fail at
/// connection N. When only the pending handshakes (and the API's connections) might not fit,
/// it warns: `accept` would then fail under a handshake flood, and back off.
fn raise_open_files_limit(config: &Config) -> Result<(), ConfigError> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            warn!("cannot raise the open files limit: {e}");
        }
    }
    let Some(open_files) = getrlimit(Resource::Nofile).current else {
        info!("open files limit: unlimited");
        return Ok(());
    };
    let l = &config.limits;
    // Summed in u64: on a 32-bit board two large limits could overflow a usize.
    let connections = l.max_connections as u64 + SPARE_FDS;
    if open_files < connections {
        return Err(ConfigError(format!(
            "limits.max_connections ({}) needs {connections} open files with the server's own, \
             and the limit is {open_files}: raise it (LimitNOFILE= under systemd, `ulimit -n` \
             in a shell) or lower limits.max_connections to {}",
            l.max_connections,
            open_files.saturating_sub(SPARE_FDS)
        )));
    }
    let api = if config.api.is_some() { shequ_chat::api::MAX_API_CONNECTIONS as u64 } else { 0 };
    let wanted = connections + l.max_pending_handshakes as u64 + api;
    if open_files < wanted {
        warn!(
            "the open files limit is {open_files}, below limits.max_connections + \
             limits.max_pending_handshakes + {} = {wanted}: under a flood of handshakes, accept \
             will fail; raise it (LimitNOFILE= under systemd) or lower the limits",
            SPARE_FDS + api
        );
    } else {
        info!(
            "open files limit: {open_files}, enough for {} connections and {} handshakes",
            l.max_connections, l.max_pending_handshakes
        );
    }
    Ok(())
}

fn init_logging(config: &Config) {
    let level = std::env::var(LOG_ENV)
        .ok()
        .and_then(|l| l.parse::<LevelFilter>().ok())
        .or_else(|| config.log_level.parse().ok())
        .unwrap_or(LevelFilter::Info);
    let colors = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // Our own lines at the configured level; the libraries' chatter only from info up.
    let logger = simple_logger::SimpleLogger::new()
        .with_level(level.min(LevelFilter::Info))
        .with_module_level("shequ_chat", level)
        .with_colors(colors);
    let logger = if config.log_timestamps {
        logger.with_utc_timestamps()
    } else {
        logger.without_timestamps()
    };
    let _ = logger.init();
}
