//! The command line of a Switchboard application binary:
//! `start [-d] [--only gateway|worker] | stop | restart | reload | status | connections |
//! push | online | kick | config print | config check`, plus the hidden `gateway` /
//! `worker` roles the supervisor starts.
//!
//! `push`, `online` and `kick` are API clients ([`crate::client`]): they find the
//! gateways through the configured store, authenticate with the secret, and need no
//! supervisor on this machine. Their exit status is for scripts: 0 done, 1 not online
//! or not found, 2 usage or configuration error, 3 the deployment could not be reached
//! (no gateway, a timeout, the store down).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, LogFormat};
use crate::supervisor::{self, Only};
use crate::worker::Events;
use crate::{stats, ApiError, Assets, ClientId, Error, Gateway};

/// Builds the application's `Events` for each worker process.
type EventsFactory = Arc<dyn Fn() -> Arc<dyn Events> + Send + Sync>;

/// An application: its name and version, its default configuration and its business
/// code.
///
/// ```no_run
/// use switchboard::{App, Events};
/// struct Nothing;
/// impl Events for Nothing {}
/// fn main() -> std::process::ExitCode {
///     App::new("demo", || Nothing)
///         .version(env!("CARGO_PKG_VERSION"))
///         .default_config("name = \"demo\"\n")
///         .run()
/// }
/// ```
pub struct App {
    name: &'static str,
    version: Option<&'static str>,
    about: Option<&'static str>,
    default_config: &'static str,
    events: EventsFactory,
    assets: Assets,
}

/// This framework's version, shown beside the application's by `--version`.
pub const FRAMEWORK_VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Parser)]
struct Cli {
    /// Configuration file (TOML); without it the application's embedded default is used.
    #[arg(long, short, global = true, env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides `data_dir` of the configuration.
    #[arg(long, global = true, env = "SWITCHBOARD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Overrides one configuration key (`worker.count=4`); may be repeated. Environment
    /// variables `SWITCHBOARD__SECTION__KEY=value` do the same; flags win.
    #[arg(long = "set", short = 's', global = true, value_name = "KEY=VALUE")]
    set: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the supervisor with every gateway and worker of this machine.
    Start {
        /// Detach and run in the background (log to `log.file`, by default
        /// `<data_dir>/run/switchboard.log`).
        #[arg(short, long)]
        daemon: bool,
        /// Run only gateways or only workers here (multi-machine deployments).
        #[arg(long, value_enum)]
        only: Option<Only>,
        /// Read further `KEY=VALUE` overrides from standard input, each ended by a NUL
        /// byte: how `start -d` hands its `--set` values to the daemon, off the
        /// command line that `ps` shows everybody.
        #[arg(long, hide = true)]
        overrides_on_stdin: bool,
    },
    /// Stop a running supervisor and its children (waits until they are gone).
    Stop,
    /// Stop, then start in the background.
    Restart {
        /// Run only gateways or only workers here.
        #[arg(long, value_enum)]
        only: Option<Only>,
    },
    /// Replace the workers with the binary now on disk; clients stay connected.
    Reload,
    /// Show every process: role, pid, uptime, clients, events/s, memory, restarts.
    Status,
    /// List connected clients: client_id, address, uid, groups, idle time.
    Connections {
        /// Only clients bound to this uid.
        #[arg(long)]
        uid: Option<String>,
        /// Only members of this group.
        #[arg(long)]
        group: Option<String>,
    },
    /// Send a message to a client, a uid's clients, a group or everybody (no worker
    /// needed). Exit 0 delivered, 1 nobody reached, 2 usage or configuration error, 3
    /// deployment unreachable.
    Push {
        #[command(flatten)]
        target: PushTarget,
        /// The message (one line for `text` clients).
        message: String,
    },
    /// Tell whether a client, or any client of a uid, is online. Exit 0 online, 1 not.
    Online {
        #[command(flatten)]
        who: OnlineTarget,
    },
    /// Disconnect a client, after sending it --message. Exit 0 closed, 1 not online.
    Kick {
        /// The client id (20 hex digits).
        id: ClientId,
        /// A last message for the client before it is closed.
        #[arg(long, short)]
        message: Option<String>,
    },
    /// Print or check configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Run one gateway process (started by the supervisor, or alone).
    #[command(hide = true)]
    Gateway {
        /// Index of this gateway on this machine.
        #[arg(long, default_value_t = 0)]
        index: usize,
    },
    /// Run one worker process (started by the supervisor, or alone).
    #[command(hide = true)]
    Worker {
        /// Index of this worker on this machine.
        #[arg(long, default_value_t = 0)]
        index: usize,
    },
}

/// Exactly one recipient of `push`.
#[derive(Args)]
#[group(required = true, multiple = false)]
struct PushTarget {
    /// One client, by id.
    #[arg(long, value_name = "ID")]
    client: Option<ClientId>,
    /// Every client bound to this uid.
    #[arg(long, value_name = "UID")]
    uid: Option<String>,
    /// Every member of this group.
    #[arg(long, value_name = "GROUP")]
    group: Option<String>,
    /// Every connected client.
    #[arg(long)]
    all: bool,
}

/// Exactly one subject of `online`.
#[derive(Args)]
#[group(required = true, multiple = false)]
struct OnlineTarget {
    /// One client, by id.
    #[arg(long, value_name = "ID")]
    client: Option<ClientId>,
    /// Any client bound to this uid.
    #[arg(long, value_name = "UID")]
    uid: Option<String>,
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Print the effective configuration (the embedded default, or the file given);
    /// secrets are hidden.
    Print {
        /// Print the secrets too (`secret`, `admin.token`, database and Redis
        /// passwords).
        #[arg(long)]
        show_secrets: bool,
    },
    /// Check a configuration file; exits non-zero with the offending key and line.
    Check {
        /// The file (default: --config).
        file: Option<PathBuf>,
    },
}

impl App {
    /// An application named `name` whose workers run the `Events` that `events` builds.
    pub fn new<E: Events, F: Fn() -> E + Send + Sync + 'static>(
        name: &'static str,
        events: F,
    ) -> Self {
        Self {
            name,
            version: None,
            about: None,
            default_config: "",
            events: Arc::new(move || Arc::new(events()) as Arc<dyn Events>),
            assets: Assets::default(),
        }
    }

    /// A file embedded in the binary, served at `path` by every `websocket` listener to
    /// a `GET` without `Upgrade` (`/` is the page; the type comes from the extension).
    ///
    /// ```no_run
    /// # use switchboard::{App, Events};
    /// # struct Chat;
    /// # impl Events for Chat {}
    /// App::new("chat", || Chat)
    ///     .asset("/", b"<!doctype html><script src=/chat.js></script>")
    ///     .asset("/chat.js", b"new WebSocket(`ws://${location.host}/`)")
    ///     .run();
    /// ```
    pub fn asset(mut self, path: &str, body: &'static [u8]) -> Self {
        self.assets.add(path, body);
        self
    }

    /// The application's version, shown by `--version` beside the framework's; pass
    /// `env!("CARGO_PKG_VERSION")` to use the application crate's.
    pub fn version(mut self, version: &'static str) -> Self {
        self.version = Some(version);
        self
    }

    /// One line about the application, shown at the top of `--help`.
    pub fn about(mut self, about: &'static str) -> Self {
        self.about = Some(about);
        self
    }

    /// The configuration used when no file is given (TOML text, usually
    /// `include_str!`-ed from the application's default file).
    pub fn default_config(mut self, toml: &'static str) -> Self {
        self.default_config = toml;
        self
    }

    /// The command line, named and versioned after the application.
    fn command(&self) -> clap::Command {
        let version = match self.version {
            Some(v) => format!("{v} (switchboard {FRAMEWORK_VERSION})"),
            None => format!("(switchboard {FRAMEWORK_VERSION})"),
        };
        let about = match self.about {
            Some(a) => a.to_string(),
            None => format!(
                "{}: a Switchboard application (gateways, workers and their supervisor)",
                self.name
            ),
        };
        Cli::command()
            .name(self.name)
            .bin_name(self.name)
            .version(version)
            .about(about)
    }

    /// Parses the command line and runs it; returns the process exit code.
    pub fn run(self) -> ExitCode {
        let matches = self.command().get_matches();
        let cli = match Cli::from_arg_matches(&matches) {
            Ok(cli) => cli,
            Err(e) => e.exit(),
        };
        if prints_a_report(&cli.command) {
            // `chat status | head`: a reader that goes away ends the command quietly,
            // as it does any Unix tool, instead of a panic in `println!` (Rust ignores
            // SIGPIPE, so the write fails). Only for commands that print and exit: the
            // supervisor, gateways and workers keep writing to sockets with SIGPIPE
            // ignored.
            // SAFETY: setting a signal's disposition to its default, before any other
            // thread exists.
            unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        }
        match self.dispatch(cli) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    }

    fn load_config(&self, cli: &Cli) -> Result<Config, Error> {
        let mut overrides = Config::env_overrides();
        for kv in &cli.set {
            let (k, v) = kv.split_once('=').ok_or_else(|| {
                Error::Other(format!(
                    "--set {kv:?}: expected KEY=VALUE, such as worker.count=4"
                ))
            })?;
            overrides.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        if let Command::Start {
            overrides_on_stdin: true,
            ..
        } = cli.command
        {
            overrides.extend(read_overrides(std::io::stdin().lock())?);
        }
        let mut config = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| {
                    crate::config::ConfigError::Read {
                        path: path.clone(),
                        source,
                    }
                })?;
                Config::from_toml_with(&text, Some(path), &overrides)?
            }
            None => {
                let mut c = Config::from_toml_with(self.default_config, None, &overrides)?;
                if self.default_config.trim().is_empty() {
                    c.name = self.name.to_string();
                }
                c
            }
        };
        if let Some(dir) = &cli.data_dir {
            config.data_dir = dir.clone();
        }
        Ok(config)
    }

    fn dispatch(self, cli: Cli) -> Result<ExitCode, Error> {
        if matches!(
            cli.command,
            Command::Push { .. } | Command::Online { .. } | Command::Kick { .. }
        ) {
            return Ok(self.client_command(cli));
        }
        let config = self.load_config(&cli)?;
        match cli.command {
            Command::Config {
                action: ConfigAction::Print { show_secrets },
            } => {
                let shown = if show_secrets {
                    config
                } else {
                    config.with_secrets_hidden()
                };
                print!("{}", shown.to_toml());
                Ok(ExitCode::SUCCESS)
            }
            Command::Config {
                action: ConfigAction::Check { file },
            } => {
                let path = file.or(cli.config).ok_or_else(|| {
                    Error::Other("config check needs a file (argument or --config)".into())
                })?;
                let checked = Config::load(&path)?;
                preflight(&checked, None, Some(&path))?;
                println!("{}: ok", path.display());
                Ok(ExitCode::SUCCESS)
            }
            Command::Start {
                daemon: true, only, ..
            } => self.start_daemon(&config, &cli, only),
            Command::Start {
                daemon: false,
                only,
                ..
            } => {
                if let Some(pid) = supervisor::running_pid(&config) {
                    return Err(Error::Other(format!(
                        "already running (supervisor pid {pid}); use `stop` first"
                    )));
                }
                preflight(&config, only, cli.config.as_deref())?;
                init_logging(&config, "supervisor");
                let rt = runtime(1, "supervisor")?;
                let handle = rt.spawn(supervisor::run(config, only));
                rt.block_on(handle).unwrap_or_else(|e| {
                    Err(Error::Other(format!("supervisor task failed: {e}")))
                })?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Stop => {
                stop_running(&config)?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Restart { only } => {
                // What the new deployment would refuse must not stop the running one.
                preflight(&config, only, cli.config.as_deref())?;
                if supervisor::running_pid(&config).is_some() {
                    stop_running(&config)?;
                }
                self.start_daemon(&config, &cli, only)
            }
            Command::Reload => {
                let pid = supervisor::signal_running(&config, libc::SIGUSR1, None)?;
                println!(
                    "reload requested (supervisor pid {pid}); workers are replaced one at a time"
                );
                Ok(ExitCode::SUCCESS)
            }
            Command::Status => {
                print_status(&config)?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Connections { uid, group } => {
                init_logging_quiet();
                runtime(1, "cli")?.block_on(print_connections(config, uid, group))?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Push { .. } | Command::Online { .. } | Command::Kick { .. } => {
                Ok(self.client_command(cli))
            }
            Command::Gateway { index } => {
                init_logging(&config, "gateway");
                crate::alloc::run_on(config.gateway.effective_allocator());
                crate::metrics::set_enabled(config.metrics.enabled);
                crate::metrics::gateway::set_listeners(&config.gateway.listeners);
                let name = format!("gateway-{index}");
                let threads = config.gateway.threads;
                run_role(&name, threads, async move {
                    let shutdown = shutdown_on_signals()?;
                    crate::gateway::run(config, index, Arc::new(self.assets), shutdown).await
                })
            }
            Command::Worker { index } => {
                init_logging(&config, "worker");
                crate::alloc::run_on(config.worker.effective_allocator());
                crate::metrics::set_enabled(config.metrics.enabled);
                let events = (self.events)();
                let name = format!("worker-{index}");
                let threads = config.worker.threads;
                run_role(&name, threads, async move {
                    let shutdown = shutdown_on_signals()?;
                    crate::worker::run(config, events, shutdown).await
                })
            }
        }
    }

    /// `push`, `online`, `kick`: one API client call, with the exit status scripts test.
    fn client_command(&self, cli: Cli) -> ExitCode {
        let config = match self.load_config(&cli) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(exit::USAGE);
            }
        };
        init_logging_quiet();
        let rt = match runtime(1, "cli") {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(exit::UNREACHABLE);
            }
        };
        let outcome = rt.block_on(async {
            let name = format!("cli-{}", std::process::id());
            let gateway = Gateway::connect_as(&config, name, false)
                .await
                .map_err(|e| format!("cannot open the store: {e}"))?;
            let outcome = client_call(&gateway, cli.command).await;
            gateway.close().await;
            outcome.map_err(|e| match e {
                ApiError::NoGateway { .. } => format!(
                    "{e}; is the deployment running, and is this its configuration ({})?",
                    store_description(&config.resolved_store())
                ),
                e => e.to_string(),
            })
        });
        match outcome {
            // An answer, "not online" included, goes to standard output; errors (2, 3)
            // to standard error.
            Ok((code, text)) => {
                println!("{text}");
                ExitCode::from(code)
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(exit::UNREACHABLE)
            }
        }
    }

    /// `start -d`: re-runs this binary's `start` detached (new session, output to the
    /// log file) and waits until the pid file names it. If another start won the pid
    /// file's lock meanwhile, the daemon exits and this says which supervisor runs.
    fn start_daemon(
        &self,
        config: &Config,
        cli: &Cli,
        only: Option<Only>,
    ) -> Result<ExitCode, Error> {
        use std::os::unix::process::CommandExt;
        if let Some(pid) = supervisor::running_pid(config) {
            return Err(Error::Other(format!(
                "already running (supervisor pid {pid})"
            )));
        }
        // The same checks as a foreground start, printed here rather than in the log of
        // a daemon that exits at once.
        preflight(config, only, cli.config.as_deref())?;
        // Printed and used as an absolute path: the daemon does not keep our directory.
        let log_path = std::path::absolute(config.log_file())
            .map_err(|e| Error::io("cannot resolve the log file path", e))?;
        if let Some(dir) = log_path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| Error::io(format!("cannot open log file {}", log_path.display()), e))?;
        let log2 = log.try_clone().map_err(|e| Error::io("log file", e))?;
        let exe =
            std::env::current_exe().map_err(|e| Error::io("cannot find this executable", e))?;
        let mut cmd = std::process::Command::new(exe);
        if let Some(p) = &cli.config {
            cmd.arg("--config").arg(p);
        }
        if let Some(d) = &cli.data_dir {
            cmd.arg("--data-dir").arg(d);
        }
        cmd.arg("start");
        if let Some(only) = only {
            cmd.arg("--only").arg(match only {
                Only::Gateway => "gateway",
                Only::Worker => "worker",
            });
        }
        // `--set` values may be secrets: they go through a pipe, not the command line.
        let stdin = if cli.set.is_empty() {
            std::process::Stdio::null()
        } else {
            cmd.arg("--overrides-on-stdin");
            std::process::Stdio::piped()
        };
        cmd.stdin(stdin).stdout(log).stderr(log2);
        // SAFETY: setsid is async-signal-safe; it detaches the daemon from our terminal.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::io("cannot start the daemon", e))?;
        if let Some(mut pipe) = child.stdin.take() {
            use std::io::Write as _;
            let mut bytes = Vec::new();
            for kv in &cli.set {
                bytes.extend_from_slice(kv.as_bytes());
                bytes.push(0);
            }
            // Dropping the pipe at the end of this block is the daemon's end of input.
            pipe.write_all(&bytes)
                .map_err(|e| Error::io("cannot hand the overrides to the daemon", e))?;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let daemon = child.id();
        loop {
            let running = supervisor::running_pid(config);
            if running == Some(daemon) {
                println!(
                    "started in the background (supervisor pid {daemon}); log: {}",
                    log_path.display()
                );
                return Ok(ExitCode::SUCCESS);
            }
            if let Ok(Some(status)) = child.try_wait() {
                if let Some(pid) = running.or_else(|| supervisor::running_pid(config)) {
                    return Err(Error::Other(format!(
                        "already running (supervisor pid {pid}); this start's daemon exited ({status})"
                    )));
                }
                return Err(Error::Other(format!(
                    "the daemon exited at once ({status}); see {}",
                    log_path.display()
                )));
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::Other(format!(
                    "the daemon did not write its pid file within 10 s; see {}",
                    log_path.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Exit statuses of `push`, `online` and `kick`.
mod exit {
    /// Delivered, online, closed.
    pub const DONE: u8 = 0;
    /// Nobody reached, not online, not found.
    pub const NOT_FOUND: u8 = 1;
    /// A usage or configuration error (clap exits 2 for usage errors too).
    pub const USAGE: u8 = 2;
    /// The deployment could not be reached: no gateway, a timeout, the store down.
    pub const UNREACHABLE: u8 = 3;
}

/// Runs one client command; returns its exit status and the line to print.
async fn client_call(gateway: &Gateway, command: Command) -> Result<(u8, String), ApiError> {
    let done = |text: String| (exit::DONE, text);
    let missing = |text: String| (exit::NOT_FOUND, text);
    Ok(match command {
        Command::Push { target, message } => {
            if let Some(id) = target.client {
                if gateway.send_to_client(id, message).await? {
                    done(format!("delivered to client {id}"))
                } else {
                    missing(format!("not delivered: client {id} is not online"))
                }
            } else if let Some(uid) = target.uid {
                match gateway.send_to_uid(&[uid.as_str()], message).await? {
                    0 => missing(format!("not delivered: no client is bound to uid {uid}")),
                    n => done(format!("delivered to {n} client(s) of uid {uid}")),
                }
            } else if let Some(group) = target.group {
                match gateway
                    .send_to_group_counted(&[group.as_str()], message, &[])
                    .await?
                {
                    0 => missing(format!("not delivered: group {group} has no member online")),
                    n => done(format!("delivered to {n} member(s) of group {group}")),
                }
            } else {
                let n = gateway.send_to_all_counted(message).await?;
                done(format!("delivered to {n} client(s)"))
            }
        }
        Command::Online { who } => {
            if let Some(id) = who.client {
                if gateway.is_online(id).await? {
                    done(format!("client {id} is online"))
                } else {
                    missing(format!("client {id} is not online"))
                }
            } else {
                let uid = who.uid.unwrap_or_default();
                let ids = gateway.client_ids_by_uid(&uid).await?;
                if ids.is_empty() {
                    missing(format!("uid {uid} is not online"))
                } else {
                    let list: Vec<String> = ids.iter().map(ToString::to_string).collect();
                    done(format!(
                        "uid {uid} is online: {} client(s): {}",
                        ids.len(),
                        list.join(", ")
                    ))
                }
            }
        }
        Command::Kick { id, message } => {
            if !gateway.is_online(id).await? {
                missing(format!("client {id} is not online"))
            } else {
                gateway
                    .close_client(id, message.map(crate::Message::from))
                    .await?;
                done(format!("closed client {id}"))
            }
        }
        _ => (exit::USAGE, "not a client command".to_string()),
    })
}

/// `KEY=VALUE` overrides, each ended by a NUL byte (the last one may lack it), as
/// `start -d` writes them to its daemon's standard input.
fn read_overrides(mut input: impl std::io::Read) -> Result<Vec<(String, String)>, Error> {
    let mut bytes = Vec::new();
    input
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("cannot read the overrides on standard input", e))?;
    bytes
        .split(|b| *b == 0)
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| {
                    Error::Other("an override on standard input is not KEY=VALUE".into())
                })
        })
        .collect()
}

/// Stops the running supervisor and waits until it is gone (its own stop timeout, plus
/// the workers' drain time, plus a margin).
fn stop_running(config: &Config) -> Result<(), Error> {
    let wait = config
        .supervisor
        .stop_timeout
        .max(config.worker.drain_timeout)
        + Duration::from_secs(5);
    let pid = supervisor::signal_running(config, libc::SIGTERM, Some(wait))?;
    println!("stopped (supervisor pid {pid})");
    Ok(())
}

/// Whether the command prints a report and exits (it may be piped into `head`).
fn prints_a_report(command: &Command) -> bool {
    matches!(
        command,
        Command::Status
            | Command::Connections { .. }
            | Command::Online { .. }
            | Command::Push { .. }
            | Command::Kick { .. }
            | Command::Config { .. }
    )
}

/// A runtime whose threads carry `name`, which every log line shows. `threads` 0 means
/// one per core.
fn runtime(threads: usize, name: &str) -> Result<tokio::runtime::Runtime, Error> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        b.worker_threads(threads);
    }
    b.enable_all().thread_name(name.to_string());
    b.build()
        .map_err(|e| Error::io("cannot start the async runtime", e))
}

/// Runs a process role's main future on the runtime's named threads (not on `main`),
/// so its log lines say which process wrote them; a fatal error is logged too.
/// `threads` 1 is a single-threaded runtime, on one thread named `name`.
fn run_role<F>(name: &str, threads: usize, fut: F) -> Result<ExitCode, Error>
where
    F: std::future::Future<Output = Result<(), Error>> + Send + 'static,
{
    let result = if threads == 1 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("cannot start the async runtime", e))?;
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || rt.block_on(fut))
            .map_err(|e| Error::io("cannot start the runtime thread", e))?
            .join()
            .unwrap_or_else(|_| Err(Error::Other("main task panicked".into())))
    } else {
        let rt = runtime(threads, name)?;
        let handle = rt.spawn(fut);
        rt.block_on(handle)
            .unwrap_or_else(|e| Err(Error::Other(format!("main task failed: {e}"))))
    };
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            tracing::error!(error = %e, "{name} cannot run");
            Err(Error::Other(format!("{name}: {e}")))
        }
    }
}

fn shutdown_on_signals() -> Result<CancellationToken, Error> {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).map_err(|e| Error::io("signal handler", e))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Error::io("signal handler", e))?;
    let mut quit = signal(SignalKind::quit()).map_err(|e| Error::io("signal handler", e))?;
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = quit.recv() => {}
        }
        t.cancel();
    });
    Ok(token)
}

fn init_logging(config: &Config, role: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_thread_names(true)
        .with_target(false);
    let _ = match config.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
    tracing::debug!(role, pid = std::process::id(), "logging started");
}

fn init_logging_quiet() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("error"))
        .with_writer(std::io::stderr)
        .try_init();
}

/// The admin listener's port must be free (every `start`, `--only worker` too: each
/// machine's supervisor serves it).
fn check_admin_free(config: &Config) -> Result<(), Error> {
    if supervisor::running_pid(config).is_some()
        || !config.admin.enabled
        || config.admin.listen.port() == 0
    {
        return Ok(());
    }
    match std::net::TcpListener::bind(config.admin.listen) {
        Ok(_) => Ok(()),
        Err(e) => Err(Error::Other(format!(
            "invalid config: admin.listen: cannot bind {}: {e} (another deployment's admin listener? set admin.listen)",
            config.admin.listen
        ))),
    }
}

/// What must hold before anything starts (and what `config check` checks): the
/// backends are compiled in, the certificates load, the client ports and the admin
/// listener's port are free. The public default secret (allowed on loopback only,
/// which validation checks) is warned about on standard error.
/// With `--only worker` the gateways' certificates and ports are not this machine's
/// business; with `--only gateway`, the workers' CA is not.
fn preflight(
    config: &Config,
    only: Option<Only>,
    file: Option<&std::path::Path>,
) -> Result<(), Error> {
    config.check_compiled()?;
    if let Some(warning) = config.secret_warning() {
        eprintln!("warning: {warning}");
    }
    crate::transport::tls::check_config(
        config,
        only != Some(Only::Worker),
        only != Some(Only::Gateway),
    )?;
    if only != Some(Only::Worker) {
        check_ports_free(config, file)?;
    }
    check_admin_free(config)
}

/// The client ports must be free (or held by this very deployment). `file` is the
/// configuration file, to name the line of a listener whose port is taken.
fn check_ports_free(config: &Config, file: Option<&std::path::Path>) -> Result<(), Error> {
    if supervisor::running_pid(config).is_some() {
        return Ok(());
    }
    for (i, l) in config.gateway.listeners.iter().enumerate() {
        if l.listen.port() == 0 {
            continue;
        }
        if let Err(e) = std::net::TcpListener::bind(l.listen) {
            let whence = match file {
                Some(path) => {
                    let line = std::fs::read_to_string(path).ok().and_then(|text| {
                        let needle = format!("\"{}\"", l.listen);
                        text.lines()
                            .position(|line| {
                                line.trim_start().starts_with("listen") && line.contains(&needle)
                            })
                            .map(|n| n + 1)
                    });
                    match line {
                        Some(n) => format!(" file {}, line {n}", path.display()),
                        None => format!(" file {} (set by an override)", path.display()),
                    }
                }
                None => " (embedded default)".to_string(),
            };
            return Err(Error::Other(format!(
                "invalid config{whence}: gateway.listeners[{i}].listen: cannot bind {}: {e}",
                l.listen
            )));
        }
    }
    Ok(())
}

/// Where a store is, in a few words, for messages.
fn store_description(store: &switchboard_store::StoreConfig) -> String {
    use switchboard_store::StoreConfig;
    match store {
        StoreConfig::Memory => "an in-process memory store".into(),
        StoreConfig::File { path } => format!("file store {}", path.display()),
        StoreConfig::Memcached { servers } => format!("memcached {}", servers.join(",")),
        StoreConfig::Redis { url } => format!("redis {url}"),
        StoreConfig::RedisCluster { cluster } => format!("redis cluster {}", cluster.join(",")),
    }
}

fn human_bytes(n: u64) -> String {
    let n = n as f64;
    if n >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} GiB", n / (1024.0 * 1024.0 * 1024.0))
    } else if n >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", n / (1024.0 * 1024.0))
    } else {
        format!("{:.0} KiB", n / 1024.0)
    }
}

fn human_age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn print_status(config: &Config) -> Result<(), Error> {
    let pid = supervisor::running_pid(config).ok_or_else(|| {
        Error::Other(format!(
            "not running (no live supervisor in {})",
            supervisor::pid_file(config).display()
        ))
    })?;
    let now = stats::unix_now();
    let state = supervisor::read_state(config);
    let all = stats::read_all(&config.run_dir());
    let up = state
        .as_ref()
        .map(|s| human_age(now.saturating_sub(s.started)))
        .unwrap_or_else(|| "?".into());
    println!("{} — supervisor pid {pid}, up {up}", config.name);
    println!(
        "{:<8} {:>3} {:>8} {:>7} {:>8} {:>10} {:>10} {:>8}  STATE",
        "ROLE", "#", "PID", "UPTIME", "CLIENTS", "EVENTS/S", "MEMORY", "RESTARTS"
    );
    let children = state.map(|s| s.children).unwrap_or_default();
    for c in &children {
        let role = match c.role {
            supervisor::ChildRole::Gateway => "gateway",
            supervisor::ChildRole::Worker => "worker",
        };
        let st = all.iter().find(|s| s.pid == c.pid && c.pid != 0);
        let clients = match (c.role, st) {
            (supervisor::ChildRole::Gateway, Some(s)) => s.clients.to_string(),
            (supervisor::ChildRole::Worker, Some(s)) => format!("gw:{}", s.clients),
            _ => "-".into(),
        };
        println!(
            "{:<8} {:>3} {:>8} {:>7} {:>8} {:>10} {:>10} {:>8}  {}{}",
            role,
            c.index,
            if c.pid == 0 {
                "-".into()
            } else {
                c.pid.to_string()
            },
            if c.pid == 0 {
                "-".into()
            } else {
                human_age(now.saturating_sub(c.started))
            },
            clients,
            st.map(|s| format!("{:.1}", s.events_per_sec))
                .unwrap_or_else(|| "-".into()),
            st.map(|s| human_bytes(s.rss_bytes))
                .unwrap_or_else(|| "-".into()),
            c.restarts,
            c.state,
            c.last_exit
                .as_ref()
                .map(|e| format!(" (last: {e})"))
                .unwrap_or_default(),
        );
    }
    // The addresses the gateways bound: a port 0 in the configuration shows here.
    let bound = all
        .iter()
        .find(|s| s.role == "gateway")
        .and_then(|s| s.detail.get("listeners"))
        .and_then(|v| v.as_array());
    if let Some(bound) = bound {
        let shown: Vec<String> = config
            .gateway
            .listeners
            .iter()
            .zip(bound)
            .map(|(l, a)| format!("{} {}", l.name, a.as_str().unwrap_or("?")))
            .collect();
        println!("listeners: {}", shown.join(", "));
    }
    let (total, mps) = stats::gateway_totals(&all);
    // Scripts read this line (tools/bench/scenarios): keep it alone.
    println!("clients connected: {total}");
    println!("messages/s: {mps:.1}");
    if let Some(line) = statistics_headline(config) {
        println!("{line}");
    }
    if let Some(addr) = crate::admin::running_address(config) {
        println!("admin: http://{addr}/ (dashboard), http://{addr}/metrics (Prometheus)");
    }
    Ok(())
}

/// `statistics: ... calls/min, ...% success, p99 ... ms` for the last full minute and
/// the last hour, from the statistics database (read-only); `None` without one.
fn statistics_headline(config: &Config) -> Option<String> {
    use crate::statistic::db::{Filter, StatDb};
    let path = config.statistic_db();
    if !path.exists() {
        return None;
    }
    let db = StatDb::open_read_only(&path).ok()?;
    let now = stats::unix_now() / 60;
    let range = |from: u64, to: u64| {
        db.minutes(&Filter {
            from_minute: from,
            to_minute: to,
            ..Filter::default()
        })
        .ok()
        .map(|(_, total)| total)
    };
    let last = range(now - 1, now - 1)?;
    let hour = range(now - 60, now)?;
    let pct = |r: f64| format!("{:.1}%", r * 100.0);
    Some(format!(
        "statistics: {} calls/min, {} success, p99 {:.1} ms (last full minute); {} calls, {} success, p99 {:.1} ms (last hour)",
        last.calls,
        pct(last.success_rate),
        last.p99_ms,
        hour.calls,
        pct(hour.success_rate),
        hour.p99_ms
    ))
}

async fn print_connections(
    config: Config,
    uid: Option<String>,
    group: Option<String>,
) -> Result<(), Error> {
    let gateway = Gateway::connect(&config).await?;
    let gateways = crate::discovery::list(gateway.raw_store().as_ref(), &config.name)
        .await?
        .len();
    if gateways == 0 {
        gateway.close().await;
        return Err(Error::Other(format!(
            "no gateway of deployment {:?} found in the store ({}); is it running, with this configuration?",
            config.name,
            store_description(&config.resolved_store()),
        )));
    }
    if !gateway
        .wait_for_gateways(gateways, Duration::from_secs(5))
        .await
    {
        eprintln!("warning: not every gateway answered; the list may be incomplete");
    }
    let rows = gateway.clients().await?;
    println!(
        "{:<20} {:<22} {:<20} {:<16} {:>8}  GROUPS",
        "CLIENT_ID", "ADDRESS", "LISTENER", "UID", "IDLE"
    );
    let mut shown = 0;
    for r in rows {
        if uid.as_ref().is_some_and(|u| r.uid.as_ref() != Some(u))
            || group.as_ref().is_some_and(|g| !r.groups.contains(g))
        {
            continue;
        }
        shown += 1;
        println!(
            "{:<20} {:<22} {:<20} {:<16} {:>8}  {}",
            r.client.to_string(),
            r.addr,
            format!("{} ({})", r.listener, r.protocol),
            r.uid.as_deref().unwrap_or("-"),
            human_age(r.idle_ms / 1000),
            r.groups.join(",")
        );
    }
    println!("{shown} client(s)");
    gateway.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;
    impl Events for Nothing {}

    /// What `NAME ARGS` prints where clap stops (`-V`, `--help`).
    fn shown(app: &App, args: &[&str]) -> String {
        let argv = std::iter::once(app.name).chain(args.iter().copied());
        match app.command().try_get_matches_from(argv) {
            Ok(_) => panic!("{args:?} ran instead of printing"),
            Err(e) => e.render().to_string(),
        }
    }

    #[test]
    fn version_names_the_application_and_the_framework() {
        let bare = App::new("rooms", || Nothing);
        assert_eq!(
            shown(&bare, &["-V"]),
            format!("rooms (switchboard {FRAMEWORK_VERSION})\n")
        );
        let versioned = App::new("rooms", || Nothing).version("1.2.3");
        assert_eq!(
            shown(&versioned, &["--version"]),
            format!("rooms 1.2.3 (switchboard {FRAMEWORK_VERSION})\n")
        );
        let help = shown(&bare, &["--help"]);
        assert!(
            help.starts_with("rooms: a Switchboard application") && help.contains("Usage: rooms"),
            "{help}"
        );
    }
}
