//! A deployment of an application under test: configuration, processes, log.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use switchboard::config::HeartbeatConfig;
use switchboard::supervisor::{self, ChildRole};
use switchboard::{stats, Config, Gateway};

use crate::{spawn, Client, WAIT};

/// The secret every deployment of the kit uses.
const SECRET: &str = "test-secret";

/// One client listener of a deployment (`[[gateway.listeners]]`): its name, its
/// protocol and any further keys. The kit configures each listener on `127.0.0.1:0`:
/// the deployment's supervisor picks the port and the gateways report it
/// ([`Deployment::listener_addr`]).
///
/// ```
/// use switchboard_testkit::Listener;
///
/// let lines = Listener::text("telnet").keys("max_message = 1024");
/// let frames = Listener::frame("devices");
/// // Any protocol the framework knows, by its configuration name:
/// let other = Listener::new("api", "text");
/// # let _ = (lines, frames, other);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    name: String,
    protocol: String,
    keys: String,
}

impl Listener {
    /// A listener named `name` speaking `protocol`, the name of the protocol in the
    /// configuration (`text`, `frame`, ...).
    pub fn new(name: &str, protocol: &str) -> Self {
        Self {
            name: name.to_owned(),
            protocol: protocol.to_owned(),
            keys: String::new(),
        }
    }

    /// A `text` (newline-delimited lines) listener.
    pub fn text(name: &str) -> Self {
        Self::new(name, "text")
    }

    /// A `frame` (4-byte big-endian length + payload) listener.
    pub fn frame(name: &str) -> Self {
        Self::new(name, "frame")
    }

    /// Adds TOML keys to the listener's table (`max_message = 1024`); may be called
    /// more than once.
    pub fn keys(mut self, toml: &str) -> Self {
        push_lines(&mut self.keys, toml);
        self
    }

    /// The listener's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// What to deploy: the binary, process counts, listeners, timings and extra
/// configuration. Built with [`Options::new`] and the methods below; everything not
/// set keeps the default given there.
///
/// ```
/// use std::time::Duration;
/// use switchboard_testkit::{Listener, Options};
///
/// let options = Options::new("/path/to/chat")
///     .gateways(2)
///     .workers(3)
///     .listener(Listener::text("telnet"))
///     .listener(Listener::frame("devices").keys("max_message = 4096"))
///     .hold_timeout(Duration::from_secs(1))
///     .gateway_keys("outbound_limit = 65536")
///     .section("[db.instances.history]\ndriver = \"sqlite\"\npath = \"history.sqlite\"");
/// # let _ = options;
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    binary: PathBuf,
    name: String,
    gateways: usize,
    workers: usize,
    listeners: Vec<Listener>,
    heartbeat: HeartbeatConfig,
    hold_timeout: Duration,
    restart_delay: Duration,
    gateway_keys: String,
    worker_keys: String,
    sections: Vec<String>,
    /// The `[store]` table's body: by default the file store in the data directory, so
    /// that a test needs no server; a test of another backend gives its own.
    store: String,
    /// The `[admin]` table's body: by default a free port, so that tests never share
    /// the default 127.0.0.1:55757 (the bound address is in `run/admin.addr`).
    admin: String,
}

impl Options {
    /// A deployment of `binary` (in a test: `env!("CARGO_BIN_EXE_<bin>")`) with the
    /// defaults:
    ///
    /// - `name`: the binary's file name followed by `-test` (secret `test-secret`);
    /// - 1 gateway, 2 workers;
    /// - one `text` listener named `main` if no [`listener`](Options::listener) is
    ///   given;
    /// - the file store in the data directory, `worker.discovery_interval` 200 ms,
    ///   `worker.drain_timeout` and `supervisor.stop_timeout` 10 s;
    /// - heartbeat every 25 s that closes nobody, `gateway.hold_timeout` 30 s,
    ///   `supervisor.restart_delay` 200 ms.
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        let binary = binary.into();
        let stem = binary
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "switchboard".into());
        Self {
            name: format!("{stem}-test"),
            binary,
            gateways: 1,
            workers: 2,
            listeners: Vec::new(),
            heartbeat: HeartbeatConfig::default(),
            hold_timeout: Duration::from_secs(30),
            restart_delay: Duration::from_millis(200),
            gateway_keys: String::new(),
            worker_keys: String::new(),
            sections: Vec::new(),
            store: "backend = \"file\"\npath = \"store.sqlite\"\n".into(),
            admin: "listen = \"127.0.0.1:0\"\n".into(),
        }
    }

    /// The body of the `[admin]` table (the admin listener: dashboard, `/metrics`),
    /// replacing the default `listen = "127.0.0.1:0"`.
    pub fn admin(mut self, toml: &str) -> Self {
        self.admin = toml.to_owned();
        self
    }

    /// The body of the `[store]` table, replacing the default file store
    /// (`backend = "file"`, `path = "store.sqlite"` in the data directory): a test of
    /// the Redis or memcached backend points the deployment at its own server.
    ///
    /// ```
    /// # let options = switchboard_testkit::Options::new("/path/to/app");
    /// let options = options.store("backend = \"redis\"\nurl = \"redis://127.0.0.1:6390\"");
    /// # let _ = options;
    /// ```
    pub fn store(mut self, toml: &str) -> Self {
        self.store = toml.to_owned();
        self
    }

    /// Runs another binary (a copy of the application's, say) with the same options.
    pub fn binary(mut self, binary: impl Into<PathBuf>) -> Self {
        self.binary = binary.into();
        self
    }

    /// The deployment's `name` (prefix of its store keys).
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    /// `gateway.count`: gateway processes, all sharing each listener's port.
    pub fn gateways(mut self, count: usize) -> Self {
        self.gateways = count;
        self
    }

    /// `worker.count`: worker processes.
    pub fn workers(mut self, count: usize) -> Self {
        self.workers = count;
        self
    }

    /// Adds a client listener. The first one is [`Deployment::addr`]; without any, the
    /// deployment has one `text` listener named `main`.
    pub fn listener(mut self, listener: Listener) -> Self {
        self.listeners.push(listener);
        self
    }

    /// `[gateway.heartbeat]`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchboard::config::HeartbeatConfig;
    /// # let options = switchboard_testkit::Options::new("/path/to/app");
    /// // Ping every 300 ms; close a client silent for 3 intervals.
    /// let options = options.heartbeat(HeartbeatConfig {
    ///     interval: Duration::from_millis(300),
    ///     ping: Some("ping".into()),
    ///     idle_intervals: 3,
    /// });
    /// # let _ = options;
    /// ```
    pub fn heartbeat(mut self, heartbeat: HeartbeatConfig) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// `gateway.hold_timeout`: how long events wait for a worker before they are
    /// rejected.
    pub fn hold_timeout(mut self, timeout: Duration) -> Self {
        self.hold_timeout = timeout;
        self
    }

    /// `supervisor.restart_delay`: how long the supervisor waits before it restarts a
    /// process that died.
    pub fn restart_delay(mut self, delay: Duration) -> Self {
        self.restart_delay = delay;
        self
    }

    /// Adds TOML keys to the `[gateway]` table (`outbound_limit = 65536`); may be
    /// called more than once.
    pub fn gateway_keys(mut self, toml: &str) -> Self {
        push_lines(&mut self.gateway_keys, toml);
        self
    }

    /// Adds TOML keys to the `[worker]` table (`threads = 1`); may be called more
    /// than once.
    pub fn worker_keys(mut self, toml: &str) -> Self {
        push_lines(&mut self.worker_keys, toml);
        self
    }

    /// Appends TOML to the end of the configuration: tables the kit does not write
    /// (`[db.instances.NAME]`, `[log]`, an application's own). May be called more than
    /// once; the sections keep their order. They must not repeat a table the kit
    /// writes (`[gateway]`, `[gateway.heartbeat]`, `[worker]`, `[supervisor]`,
    /// `[store]`); use [`gateway_keys`](Options::gateway_keys) for `[gateway]`,
    /// [`worker_keys`](Options::worker_keys) for `[worker]` and [`store`](Options::store)
    /// for `[store]`.
    pub fn section(mut self, toml: &str) -> Self {
        self.sections.push(toml.to_owned());
        self
    }

    /// The configuration file's text, with the data directory; every listener on
    /// `127.0.0.1:0`.
    fn to_toml(&self, data_dir: &Path, listeners: &[Listener]) -> String {
        let mut text = String::new();
        let _ = write!(
            text,
            "name = {name}\nsecret = {SECRET:?}\ndata_dir = {data}\n\n\
             [store]\n{store}\n\
             [gateway]\ncount = {gateways}\nhold_timeout = {hold}\n{gateway_keys}\n",
            name = toml_string(&self.name),
            data = toml_string(&data_dir.to_string_lossy()),
            store = with_newline(&self.store),
            gateways = self.gateways,
            hold = duration(self.hold_timeout),
            gateway_keys = self.gateway_keys,
        );
        for listener in listeners {
            let _ = write!(
                text,
                "[[gateway.listeners]]\nname = {name}\nlisten = \"127.0.0.1:0\"\n\
                 protocol = {protocol}\n{keys}\n",
                name = toml_string(&listener.name),
                protocol = toml_string(&listener.protocol),
                keys = listener.keys,
            );
        }
        let _ = write!(
            text,
            "[gateway.heartbeat]\ninterval = {interval}\nidle_intervals = {idle}\n",
            interval = duration(self.heartbeat.interval),
            idle = self.heartbeat.idle_intervals,
        );
        if let Some(ping) = &self.heartbeat.ping {
            let _ = writeln!(text, "ping = {}", toml_string(ping));
        }
        let _ = write!(
            text,
            "\n[worker]\ncount = {workers}\ndiscovery_interval = \"200ms\"\n\
             drain_timeout = \"10s\"\n{worker_keys}\n\
             [supervisor]\nstop_timeout = \"10s\"\nrestart_delay = {restart}\n",
            workers = self.workers,
            worker_keys = self.worker_keys,
            restart = duration(self.restart_delay),
        );
        text.push_str("\n[admin]\n");
        push_lines(&mut text, &self.admin);
        for section in &self.sections {
            text.push('\n');
            push_lines(&mut text, section);
        }
        text
    }
}

/// `toml`, ending with a newline.
fn with_newline(toml: &str) -> String {
    let mut s = String::new();
    push_lines(&mut s, toml);
    s
}

/// Appends `toml` to `to`, ending with a newline.
fn push_lines(to: &mut String, toml: &str) {
    to.push_str(toml);
    if !toml.is_empty() && !toml.ends_with('\n') {
        to.push('\n');
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A duration as the configuration writes it (`"30s"`, `"200ms"`).
fn duration(d: Duration) -> String {
    if d == Duration::from_secs(d.as_secs()) {
        format!("\"{}s\"", d.as_secs())
    } else if d.as_nanos() == d.as_millis() * 1_000_000 {
        format!("\"{}ms\"", d.as_millis())
    } else {
        format!("\"{}ns\"", d.as_nanos())
    }
}

/// A deployment of an application under test: a configuration in a temporary
/// directory, and the supervisor the test started with it (which starts the gateways
/// and workers).
///
/// Dropping it stops the supervisor and waits for it (its gateways and workers stop
/// with it), then removes the directory.
///
/// ```no_run
/// use switchboard_testkit::{ChildRole, Deployment, Options};
///
/// let d = Deployment::start(Options::new("/path/to/app"));
/// let worker = d.pids(ChildRole::Worker)[0];
/// unsafe { libc::kill(worker as i32, libc::SIGKILL) };
/// d.wait_log("child died; restarting");
/// d.wait_ready(); // the supervisor has started another one
/// ```
pub struct Deployment {
    dir: tempfile::TempDir,
    config_path: PathBuf,
    config: Config,
    /// The listeners' names, in the configuration's order.
    listeners: Vec<String>,
    binary: PathBuf,
    log_path: PathBuf,
    supervisor: Option<Child>,
}

impl Deployment {
    /// Writes the configuration, starts `BIN --config FILE start` (the supervisor, in
    /// the foreground, its output to [`log_path`](Deployment::log_path)) and waits
    /// until it is ready ([`wait_ready`](Deployment::wait_ready)).
    pub fn start(options: Options) -> Self {
        let mut d = Self::prepare(options);
        d.spawn_supervisor();
        d.wait_ready();
        d
    }

    /// Writes the configuration (`deployment.toml` in a new temporary directory, with
    /// the data directory `data/` beside it) without starting anything: for tests of
    /// the command line (`start -d`, `config check`, ...) through
    /// [`cli`](Deployment::cli).
    pub fn prepare(options: Options) -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let mut listeners = options.listeners.clone();
        if listeners.is_empty() {
            listeners.push(Listener::text("main"));
        }
        let text = options.to_toml(&dir.path().join("data"), &listeners);
        let config_path = dir.path().join("deployment.toml");
        std::fs::write(&config_path, &text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config_path.display()));
        let config = Config::load(&config_path)
            .unwrap_or_else(|e| panic!("the generated configuration is refused: {e}\n{text}"));
        Deployment {
            listeners: listeners.into_iter().map(|l| l.name).collect(),
            log_path: dir.path().join("supervisor.log"),
            config_path,
            config,
            binary: options.binary,
            supervisor: None,
            dir,
        }
    }

    fn spawn_supervisor(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log_path.display()));
        self.supervisor = Some(spawn(&self.binary, &self.config_path, &["start"], log));
    }

    /// Waits until every gateway of the configuration reports every worker of the
    /// configuration connected (through the stats files); fails the test, with the
    /// stats and the log, after [`WAIT`].
    pub fn wait_ready(&self) {
        self.wait_ready_for(self.config.gateway.count, self.config.worker.count);
    }

    /// Waits until exactly `gateways` gateways each report `workers` worker links;
    /// fails the test, with the stats and the log, after [`WAIT`].
    pub fn wait_ready_for(&self, gateways: usize, workers: usize) {
        let deadline = Instant::now() + WAIT;
        loop {
            let all = stats::read_all(&self.config.run_dir());
            let ready = all
                .iter()
                .filter(|s| s.role == "gateway")
                .filter(|s| {
                    s.detail.get("workers").and_then(|v| v.as_u64()) == Some(workers as u64)
                })
                .count();
            if ready == gateways {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "deployment not ready ({gateways} gateway(s) with {workers} worker(s) each) \
                     after {WAIT:?}: {all:#?}\nlog:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The address of the first listener, as a running gateway bound it (see
    /// [`listener_addr`](Deployment::listener_addr)).
    pub fn addr(&self) -> SocketAddr {
        self.bound_addr(0)
    }

    /// The address of the listener named `name`, as a running gateway bound it; fails
    /// the test if there is no such listener.
    ///
    /// The listeners are configured on port 0: the supervisor picks a free port for
    /// each when it starts (one for all its gateways, kept while it runs), and the
    /// gateways report the addresses they bound in their stats files, which this reads.
    /// No port is picked by the test and freed before the deployment binds it, so
    /// tests running in parallel never race for one. It waits up to [`WAIT`] for a
    /// running gateway, and fails the test, with the log, if there is none; after
    /// [`restart`](Deployment::restart) the address is the new supervisor's.
    pub fn listener_addr(&self, name: &str) -> SocketAddr {
        let index = self
            .listeners
            .iter()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("no listener {name:?} in {:?}", self.listeners));
        self.bound_addr(index)
    }

    /// Listener `index`'s address from a running gateway's stats.
    fn bound_addr(&self, index: usize) -> SocketAddr {
        let deadline = Instant::now() + WAIT;
        loop {
            let bound = stats::read_all(&self.config.run_dir())
                .into_iter()
                .filter(|s| s.role == "gateway")
                .find_map(|s| {
                    s.detail
                        .get("listeners")?
                        .as_array()?
                        .get(index)?
                        .as_str()?
                        .parse::<SocketAddr>()
                        .ok()
                });
            if let Some(addr) = bound {
                return addr;
            }
            if Instant::now() > deadline {
                panic!(
                    "no running gateway reported the address of listener {:?} within {WAIT:?}\nlog:\n{}",
                    self.listeners[index],
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The Gateway API of this deployment, connected to every gateway of the
    /// configuration; fails the test if they are not all found within [`WAIT`].
    pub async fn api(&self) -> Gateway {
        let api = Gateway::connect(&self.config)
            .await
            .unwrap_or_else(|e| panic!("cannot open the Gateway API: {e}"));
        let want = self.config.gateway.count;
        assert!(
            api.wait_for_gateways(want, WAIT).await,
            "the Gateway API found gateways {:?}, not {want}, within {WAIT:?}",
            api.gateways()
        );
        api
    }

    /// Connects clients to the first listener until every gateway of the configuration
    /// holds at least `per_gateway` of them, and returns them grouped by gateway (in
    /// gateway number order), each with its [`id`](Client::id) learned through `api`
    /// (see [`Client::identify`]). Fails the test if that takes more than a few hundred
    /// connections.
    ///
    /// The gateways share the port (SO_REUSEPORT) and the kernel, not the test, picks
    /// which one accepts a connection, so some gateways get more than `per_gateway`:
    /// those clients are returned too (closing them would be events for the
    /// application). Nothing is read from the clients: what the application sends on
    /// connect is still to be read.
    ///
    /// ```no_run
    /// # async fn demo(d: &switchboard_testkit::Deployment) {
    /// let api = d.api().await;
    /// let [on_a, on_b]: [Vec<_>; 2] = d
    ///     .connect_on_every_gateway(&api, 2)
    ///     .await
    ///     .try_into()
    ///     .expect("2 gateways");
    /// assert_ne!(on_a[0].id.unwrap().gateway, on_b[0].id.unwrap().gateway);
    /// # }
    /// ```
    pub async fn connect_on_every_gateway(
        &self,
        api: &Gateway,
        per_gateway: usize,
    ) -> Vec<Vec<Client>> {
        let gateways = self.config.gateway.count;
        let limit = 100 * gateways.max(1) * per_gateway.max(1);
        let mut by_gateway: BTreeMap<u32, Vec<Client>> = BTreeMap::new();
        for _ in 0..limit {
            if by_gateway.len() == gateways && by_gateway.values().all(|c| c.len() >= per_gateway) {
                return by_gateway.into_values().collect();
            }
            let mut client = Client::connect(self.addr()).await;
            let id = client.identify(api).await;
            by_gateway.entry(id.gateway).or_default().push(client);
        }
        let counts: Vec<(u32, usize)> = by_gateway.iter().map(|(g, c)| (*g, c.len())).collect();
        panic!(
            "after {limit} connections, (gateway, clients) are {counts:?}: \
             not {per_gateway} on each of {gateways} gateways"
        );
    }

    /// The supervisor's pid: the one this deployment started, or a daemon started with
    /// `start -d` (read from the pid file); 0 if there is none.
    pub fn supervisor_pid(&self) -> u32 {
        self.supervisor
            .as_ref()
            .map(|c| c.id())
            .or_else(|| supervisor::running_pid(&self.config))
            .unwrap_or(0)
    }

    /// The pid of the running gateway whose gateway number is `number` (from the
    /// gateways' statistics files); fails the test when none has it.
    pub fn gateway_pid(&self, number: u32) -> u32 {
        stats::read_all(&self.config.run_dir())
            .into_iter()
            .find(|s| {
                s.role == "gateway"
                    && s.detail.get("number").and_then(|v| v.as_u64()) == Some(u64::from(number))
            })
            .map(|s| s.pid)
            .unwrap_or_else(|| panic!("no running gateway has number {number}"))
    }

    /// Pids of the running gateways or workers, from the supervisor's state file.
    pub fn pids(&self, role: ChildRole) -> Vec<u32> {
        let state = supervisor::read_state(&self.config).unwrap_or_else(|| {
            panic!(
                "no supervisor state in {}",
                supervisor::state_file(&self.config).display()
            )
        });
        state
            .children
            .iter()
            .filter(|c| c.role == role && c.pid != 0)
            .map(|c| c.pid)
            .collect()
    }

    /// Everything the supervisor started by this deployment logged so far (with its
    /// gateways and workers, and the test's [`note`](Deployment::note)s). A daemon
    /// logs to `log.file` instead: read [`Config::log_file`].
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log contains `needle` and returns the log; fails the test, with
    /// the log, after [`WAIT`].
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            if Instant::now() > deadline {
                panic!("the log never contained {needle:?} within {WAIT:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Writes `---- test: TEXT` into the log, to mark in a failure's log where the
    /// test did something.
    pub fn note(&self, text: &str) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
        {
            let _ = writeln!(f, "---- test: {text}");
        }
    }

    /// Runs `BIN --config FILE ARGS...` to completion and returns its output
    /// (`status`, `connections`, `reload`, `start -d`, ...).
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.binary)
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.binary.display()))
    }

    /// Stops the supervisor this deployment started (SIGTERM, then SIGKILL after 30 s)
    /// and waits for it; also a daemon the test started with `start -d`. Its gateways
    /// and workers stop with it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.supervisor.take() {
            switchboard::process::signal(child.id(), libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.wait();
        }
        // A daemon this test started with `start -d` in this data directory.
        if let Some(pid) = supervisor::running_pid(&self.config) {
            switchboard::process::signal(pid, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(30);
            while switchboard::process::alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Stops the deployment and starts it again on the same directory (same store),
    /// then waits until it is ready. The new supervisor picks new ports:
    /// [`addr`](Deployment::addr) gives them.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn_supervisor();
        self.wait_ready();
    }

    /// Where the running supervisor's admin listener listens (`run/admin.addr`),
    /// waiting for it to appear.
    pub fn admin_addr(&self) -> SocketAddr {
        let deadline = Instant::now() + crate::WAIT;
        loop {
            if let Some(a) = switchboard::admin::running_address(&self.config) {
                return a;
            }
            if Instant::now() > deadline {
                panic!(
                    "no admin listener address after {:?}:\n{}",
                    crate::WAIT,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The configuration, as the processes load it.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The configuration file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The temporary directory that holds the configuration, the log and the data
    /// directory (removed on drop); a place for a test's own files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The data directory (`data_dir`): store, run files, stats.
    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// The binary this deployment runs.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The file the supervisor's output (and its children's) goes to.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
}

impl std::fmt::Debug for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployment")
            .field("dir", &self.dir.path())
            .field("binary", &self.binary)
            .field("listeners", &self.listeners)
            .field("supervisor_pid", &self.supervisor.as_ref().map(Child::id))
            .finish_non_exhaustive()
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_has_every_option_and_loads() {
        let options = Options::new("/nowhere/app")
            .gateways(3)
            .workers(4)
            .listener(Listener::text("lines").keys("max_message = 1024"))
            .listener(Listener::frame("frames"))
            .heartbeat(HeartbeatConfig {
                interval: Duration::from_millis(300),
                ping: Some("p\"ing".into()),
                idle_intervals: 3,
            })
            .hold_timeout(Duration::from_secs(1))
            .restart_delay(Duration::from_millis(50))
            .gateway_keys("outbound_limit = 65536")
            .gateway_keys("max_clients = 10\n")
            .section("[log]\nformat = \"json\"")
            .section("[db.instances.h]\ndriver = \"sqlite\"\npath = \"h.sqlite\"\n");
        let d = Deployment::prepare(options);
        let c = d.config();
        assert_eq!(c.name, "app-test");
        assert_eq!(c.secret, SECRET);
        assert_eq!(c.data_dir, d.dir().join("data"));
        assert_eq!(c.gateway.count, 3);
        assert_eq!(c.worker.count, 4);
        assert_eq!(c.gateway.hold_timeout, Duration::from_secs(1));
        assert_eq!(c.supervisor.restart_delay, Duration::from_millis(50));
        assert_eq!(c.gateway.outbound_limit, 65536);
        assert_eq!(c.gateway.max_clients, 10);
        assert_eq!(c.gateway.heartbeat.interval, Duration::from_millis(300));
        assert_eq!(c.gateway.heartbeat.ping.as_deref(), Some("p\"ing"));
        assert_eq!(c.gateway.heartbeat.idle_intervals, 3);
        assert_eq!(c.log.format, switchboard::config::LogFormat::Json);
        assert!(c.db.contains_key("instances"));
        let l = &c.gateway.listeners;
        assert_eq!(l.len(), 2);
        assert_eq!(
            (l[0].name.as_str(), l[0].protocol, l[0].max_message),
            ("lines", switchboard::ClientProtocol::Text, Some(1024))
        );
        assert_eq!(
            (l[1].name.as_str(), l[1].protocol),
            ("frames", switchboard::ClientProtocol::Frame)
        );
        // The deployment picks the ports (see listener_addr).
        assert!(l
            .iter()
            .all(|l| l.listen == SocketAddr::from(([127, 0, 0, 1], 0))));
        assert_eq!(d.listeners, ["lines", "frames"]);
        assert_eq!(d.binary(), Path::new("/nowhere/app"));
        // Nothing was started.
        assert_eq!(d.supervisor_pid(), 0);
    }

    #[test]
    fn without_listeners_there_is_one_text_listener_named_main() {
        let d = Deployment::prepare(Options::new("/nowhere/app").name("other"));
        let l = &d.config().gateway.listeners;
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].name, "main");
        assert_eq!(l[0].protocol, switchboard::ClientProtocol::Text);
        assert_eq!(d.config().name, "other");
        assert_eq!(d.listeners, ["main"]);
    }

    #[test]
    fn durations_are_written_in_the_largest_exact_unit() {
        assert_eq!(duration(Duration::from_secs(30)), "\"30s\"");
        assert_eq!(duration(Duration::from_millis(1500)), "\"1500ms\"");
        assert_eq!(duration(Duration::from_micros(5)), "\"5000ns\"");
    }
}
