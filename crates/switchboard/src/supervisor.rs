//! The supervisor: starts gateway and worker processes (children of the same
//! executable), restarts those that die, reloads workers, and stops everything.
//!
//! Signals, as GatewayWorker users know them:
//! - SIGINT / SIGTERM: stop (workers drain, then gateways stop; stragglers are killed
//!   after `supervisor.stop_timeout`);
//! - SIGQUIT: graceful stop (the same, waiting up to `worker.drain_timeout` for workers);
//! - SIGUSR1 / SIGUSR2: reload workers one at a time from the binary now on disk, and
//!   have gateways re-read their TLS certificates. Gateways are never restarted by a
//!   reload.
//! - SIGHUP: gateways re-read their TLS certificates (nothing else changes).

use std::collections::BTreeMap;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::alloc::AllocatorKind;
use crate::config::Config;
use crate::process;
use crate::stats;
use crate::Error;

/// Which processes this machine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Only {
    /// Gateways only.
    Gateway,
    /// Workers only.
    Worker,
}

/// A child's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChildRole {
    /// A gateway process.
    Gateway,
    /// A worker process.
    Worker,
}

impl ChildRole {
    fn arg(self) -> &'static str {
        match self {
            ChildRole::Gateway => "gateway",
            ChildRole::Worker => "worker",
        }
    }
}

/// One child as `status` shows it (the supervisor writes `run/supervisor.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildState {
    /// Role.
    pub role: ChildRole,
    /// Slot index within the role.
    pub index: usize,
    /// Current pid (0 while waiting to restart).
    pub pid: u32,
    /// Unix time of the current process's start.
    pub started: u64,
    /// Restarts since the supervisor started.
    pub restarts: u32,
    /// `running`, `restarting` or `crash-loop`.
    pub state: String,
    /// How the previous process of this slot ended.
    pub last_exit: Option<String>,
}

/// The supervisor's state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SupervisorState {
    /// Supervisor pid.
    pub pid: u32,
    /// Unix start time.
    pub started: u64,
    /// Children.
    pub children: Vec<ChildState>,
}

/// Path of the pid file.
pub fn pid_file(config: &Config) -> PathBuf {
    config.pid_file()
}

/// Path of the state file.
pub fn state_file(config: &Config) -> PathBuf {
    config.run_dir().join("supervisor.json")
}

/// A running supervisor's pid, if any (a stale pid file is ignored).
pub fn running_pid(config: &Config) -> Option<u32> {
    process::read_pid(&pid_file(config))
        .filter(|pid| *pid != std::process::id() && process::alive(*pid))
}

struct Slot {
    role: ChildRole,
    index: usize,
    /// The allocator its process runs on (set through [`crate::alloc::ENV`]).
    allocator: AllocatorKind,
    child: Option<u32>,
    started: Instant,
    started_unix: u64,
    restarts: u32,
    /// Consecutive quick deaths (within a minute of start).
    quick_deaths: u32,
    restart_at: Option<Instant>,
    last_exit: Option<String>,
    /// Bumped each time the slot's process is replaced, so a late exit of an old
    /// process is not taken for the new one's.
    generation: u64,
}

/// A child's exit, reported by its waiter task.
struct Exit {
    slot: usize,
    generation: u64,
    status: std::io::Result<ExitStatus>,
}

/// The pid file, locked (`flock`, exclusive) and holding this process's pid for as
/// long as the value lives; removed when it is dropped.
///
/// The lock, not the pid in the file, is what makes a supervisor the only one of its
/// data directory: two `start`s at the same moment both find no live pid, but only one
/// of them gets the lock. The kernel releases it when the process ends, however it
/// ends, so a crash leaves no lock behind (only a stale pid, which is ignored).
#[derive(Debug)]
pub struct PidLock {
    path: PathBuf,
    _file: std::fs::File,
}

/// Why [`PidLock::acquire`] did not get the lock.
#[derive(Debug)]
pub enum PidLockError {
    /// Another process holds the lock.
    Held,
    /// The file cannot be opened or locked.
    Io(std::io::Error),
}

impl PidLock {
    /// Takes the lock on `path` (created if missing) without waiting, then writes this
    /// process's pid into it.
    pub fn acquire(path: &Path) -> Result<Self, PidLockError> {
        use std::io::Write as _;
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        loop {
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(PidLockError::Io)?;
            // SAFETY: flock(2) on a descriptor this function owns.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let e = std::io::Error::last_os_error();
                return Err(match e.raw_os_error() {
                    Some(libc::EWOULDBLOCK) => PidLockError::Held,
                    _ => PidLockError::Io(e),
                });
            }
            // A supervisor that was exiting may have removed the file we opened (it
            // removes it, then lets the lock go): the lock that counts is the one on
            // the file at `path` now.
            let ours = file.metadata().map_err(PidLockError::Io)?;
            let same = match std::fs::metadata(path) {
                Ok(m) => (m.dev(), m.ino()) == (ours.dev(), ours.ino()),
                Err(_) => false,
            };
            if !same {
                continue;
            }
            file.set_len(0).map_err(PidLockError::Io)?;
            file.write_all(format!("{}\n", std::process::id()).as_bytes())
                .map_err(PidLockError::Io)?;
            return Ok(PidLock {
                path: path.to_path_buf(),
                _file: file,
            });
        }
    }
}

impl Drop for PidLock {
    fn drop(&mut self) {
        // Removed while still locked, so no other start locks the old file meanwhile
        // and takes it for the live one.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Locks the pid file, or says who holds it: the pid in the file (written right after
/// the lock is taken, so it is waited for a moment).
async fn lock_pid_file(config: &Config) -> Result<PidLock, Error> {
    let path = pid_file(config);
    match PidLock::acquire(&path) {
        Ok(lock) => Ok(lock),
        Err(PidLockError::Io(e)) => Err(Error::io(
            format!("cannot lock the pid file {}", path.display()),
            e,
        )),
        Err(PidLockError::Held) => {
            for _ in 0..20 {
                if let Some(pid) = process::read_pid(&path) {
                    return Err(Error::Other(format!(
                        "already running (supervisor pid {pid} holds the lock on the pid file {}); use `stop` first",
                        path.display()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(Error::Other(format!(
                "already running: another `start` holds the lock on the pid file {} (it has not written its pid yet); use `stop` first",
                path.display()
            )))
        }
    }
}

/// Creates the run directory, or takes an existing one, readable by this user only
/// (`0700`): it holds the effective configuration, with the secret.
fn private_run_dir(config: &Config) -> Result<PathBuf, Error> {
    use std::os::unix::fs::PermissionsExt;
    let run_dir = config.run_dir();
    std::fs::create_dir_all(&run_dir)
        .map_err(|e| Error::io(format!("cannot create {}", run_dir.display()), e))?;
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
        Error::io(
            format!("cannot make {} private (mode 0700)", run_dir.display()),
            e,
        )
    })?;
    Ok(run_dir)
}

/// Writes the configuration children start with, `run/effective.toml`, with
/// `data_dir` made absolute so that a reload works from any working directory. It
/// holds the secret, so it is readable by this user only (`0600`), from its first
/// byte: written to a new private file, then renamed over the old one.
fn write_effective_config(config: &Config) -> Result<PathBuf, Error> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut config = config.clone();
    if config.data_dir.is_relative() {
        let cwd = std::env::current_dir().map_err(|e| Error::io("current directory", e))?;
        config.data_dir = cwd.join(&config.data_dir);
    }
    let path = config.run_dir().join("effective.toml");
    let tmp = path.with_extension("toml.tmp");
    let written = (|| {
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        // The mode given at creation is masked by the umask; this one is not.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(config.to_toml().as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    written.map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
    Ok(path)
}

/// Gives every client listener configured with port 0 one free port, the same for
/// every gateway process of this machine, and returns the sockets that hold those
/// ports: keep them for as long as the gateways may (re)bind.
///
/// Each is bound with `SO_REUSEPORT` and without `SO_REUSEADDR`, and never listens:
/// the gateways, which bind their listeners with both options as the same user, share
/// the port with it, while the kernel gives it to nobody else — not to another bind of
/// that port, nor as anybody's ephemeral port. So the port picked is the port the
/// gateways get, with no window in which another process could take it, and a gateway
/// restarted later finds it still free.
fn reserve_listener_ports(config: &mut Config) -> Result<Vec<socket2::Socket>, Error> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut held = Vec::new();
    for (i, l) in config.gateway.listeners.iter_mut().enumerate() {
        if l.listen.port() != 0 {
            continue;
        }
        let what = format!(
            "gateway.listeners[{i}].listen: cannot pick a port on {}",
            l.listen
        );
        let socket = Socket::new(
            Domain::for_address(l.listen),
            Type::STREAM,
            Some(Protocol::TCP),
        )
        .map_err(|e| Error::io(what.clone(), e))?;
        socket
            .set_reuse_port(true)
            .and_then(|()| socket.bind(&l.listen.into()))
            .map_err(|e| Error::io(what.clone(), e))?;
        let picked = socket
            .local_addr()
            .map_err(|e| Error::io(what.clone(), e))?
            .as_socket()
            .ok_or_else(|| Error::Other(format!("{what}: not an IP address")))?;
        tracing::info!(listener = %l.name, addr = %picked, "port 0: picked a port for the gateways");
        l.listen = picked;
        held.push(socket);
    }
    Ok(held)
}

/// Runs the supervisor until stopped: makes the run directory private (`0700`), locks
/// the pid file (a second supervisor of the same data directory refuses to run,
/// naming the first), picks the ports of client listeners configured with port 0,
/// writes the configuration children start with (`run/effective.toml`, `0600`, with
/// those ports), then starts and watches them.
pub async fn run(mut config: Config, only: Option<Only>) -> Result<(), Error> {
    private_run_dir(&config)?;
    let _pid_lock = lock_pid_file(&config).await?;
    let _reserved_ports = if only == Some(Only::Worker) {
        Vec::new()
    } else {
        reserve_listener_ports(&mut config)?
    };
    // Only the supervisor that holds the lock writes it: a start that lost the race
    // leaves the running deployment's file alone.
    let config_path = write_effective_config(&config)?;
    // The admin listener and the statistics database come first: a taken admin port
    // or an unusable database fails the start before any child runs. Spool files and
    // metric snapshots left by the children of a previous supervisor are taken in by
    // the first collection round.
    let admin = crate::admin::Admin::open(&config)?;
    let admin_listener = crate::admin::bind(&config)?;
    let _addr_guard = RemoveOnDrop(crate::admin::address_file(&config));
    let admin_stop = tokio_util::sync::CancellationToken::new();
    let collector = tokio::spawn(crate::admin::collect_loop(
        admin.clone(),
        admin_stop.clone(),
    ));
    if let Some(l) = admin_listener {
        tokio::spawn(crate::admin::serve(l, admin.clone(), admin_stop.clone()));
        // The push API's Gateway handle: an API client like any other, independent of
        // the workers, so pushes go on during a reload.
        tokio::spawn(admin.clone().connect_push(admin_stop.clone()));
    }
    let exe = std::env::current_exe().map_err(|e| Error::io("cannot find this executable", e))?;
    // A rebuilt binary replaces the file; /proc/self/exe then reads "... (deleted)".
    let exe = PathBuf::from(exe.to_string_lossy().trim_end_matches(" (deleted)"));

    let mut slots = Vec::new();
    if only != Some(Only::Worker) {
        for i in 0..config.gateway.count {
            slots.push(new_slot(
                ChildRole::Gateway,
                i,
                config.gateway.effective_allocator(),
            ));
        }
    }
    if only != Some(Only::Gateway) {
        for i in 0..config.worker.count {
            slots.push(new_slot(
                ChildRole::Worker,
                i,
                config.worker.effective_allocator(),
            ));
        }
    }
    let (exit_tx, mut exit_rx) = mpsc::unbounded_channel::<Exit>();
    let started_unix = stats::unix_now();
    for i in 0..slots.len() {
        spawn_child(&exe, &config_path, &mut slots, i, &exit_tx)?;
    }
    tracing::info!(
        pid = std::process::id(),
        gateways = slots
            .iter()
            .filter(|s| s.role == ChildRole::Gateway)
            .count(),
        workers = slots.iter().filter(|s| s.role == ChildRole::Worker).count(),
        "supervisor started"
    );

    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Error::io("signal handler", e))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| Error::io("signal handler", e))?;
    let mut sigquit = signal(SignalKind::quit()).map_err(|e| Error::io("signal handler", e))?;
    let mut sigusr1 =
        signal(SignalKind::user_defined1()).map_err(|e| Error::io("signal handler", e))?;
    let mut sigusr2 =
        signal(SignalKind::user_defined2()).map_err(|e| Error::io("signal handler", e))?;
    let mut sighup = signal(SignalKind::hangup()).map_err(|e| Error::io("signal handler", e))?;
    let mut tick = tokio::time::interval(Duration::from_millis(250));

    let graceful = loop {
        write_state(&config, started_unix, &slots);
        admin.set_own(process_series(&slots));
        tokio::select! {
            _ = sigint.recv() => break false,
            _ = sigterm.recv() => break false,
            _ = sigquit.recv() => break true,
            _ = sigusr1.recv() => {
                reload(&config, &exe, &config_path, &mut slots, &exit_tx, &mut exit_rx).await;
                admin.bump(crate::metrics::Series::counter("switchboard_worker_reloads", &[], 1));
            }
            _ = sigusr2.recv() => {
                reload(&config, &exe, &config_path, &mut slots, &exit_tx, &mut exit_rx).await;
                admin.bump(crate::metrics::Series::counter("switchboard_worker_reloads", &[], 1));
            }
            _ = sighup.recv() => reload_certificates(&slots),
            Some(exit) = exit_rx.recv() => on_exit(&config, &mut slots, exit),
            _ = tick.tick() => {
                let now = Instant::now();
                for i in 0..slots.len() {
                    if slots[i].restart_at.is_some_and(|t| t <= now) {
                        slots[i].restart_at = None;
                        slots[i].restarts += 1;
                        admin.bump(crate::metrics::Series::counter(
                            "switchboard_child_restarts",
                            &[("role", slots[i].role.arg())],
                            1,
                        ));
                        if let Err(e) = spawn_child(&exe, &config_path, &mut slots, i, &exit_tx) {
                            tracing::error!(error = %e, "cannot restart child");
                            slots[i].restart_at = Some(now + Duration::from_secs(5));
                        }
                    }
                }
            }
        }
    };
    stop_children(&config, &mut slots, &mut exit_rx, graceful).await;
    admin_stop.cancel();
    let _ = collector.await;
    let _ = std::fs::remove_file(state_file(&config));
    tracing::info!("supervisor stopped");
    Ok(())
}

/// `switchboard_processes{role}`: children running now.
fn process_series(slots: &[Slot]) -> Vec<crate::metrics::Series> {
    [ChildRole::Gateway, ChildRole::Worker]
        .iter()
        .map(|r| {
            let n = slots
                .iter()
                .filter(|s| s.role == *r && s.child.is_some())
                .count();
            crate::metrics::Series::gauge("switchboard_processes", &[("role", r.arg())], n as f64)
        })
        .collect()
}

fn new_slot(role: ChildRole, index: usize, allocator: AllocatorKind) -> Slot {
    Slot {
        role,
        index,
        allocator,
        child: None,
        started: Instant::now(),
        started_unix: 0,
        restarts: 0,
        quick_deaths: 0,
        restart_at: None,
        last_exit: None,
        generation: 0,
    }
}

fn spawn_child(
    exe: &Path,
    config_path: &Path,
    slots: &mut [Slot],
    i: usize,
    exit_tx: &mpsc::UnboundedSender<Exit>,
) -> Result<(), Error> {
    let slot = &mut slots[i];
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--config")
        .arg(config_path)
        .arg(slot.role.arg())
        .arg("--index")
        .arg(slot.index.to_string())
        .env(crate::alloc::ENV, slot.allocator.env_value())
        .stdin(Stdio::null());
    // SAFETY: prctl is async-signal-safe; it makes the child get SIGTERM if the
    // supervisor dies, so no orphan keeps a port or a client.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = tokio::process::Command::from(cmd).spawn().map_err(|e| {
        Error::io(
            format!("cannot start {} {}", slot.role.arg(), slot.index),
            e,
        )
    })?;
    let pid = child.id().unwrap_or(0);
    slot.generation += 1;
    slot.child = Some(pid);
    slot.started = Instant::now();
    slot.started_unix = stats::unix_now();
    tracing::info!(
        role = slot.role.arg(),
        index = slot.index,
        pid,
        "started child"
    );
    let (tx, generation) = (exit_tx.clone(), slot.generation);
    tokio::spawn(async move {
        let status = child.wait().await;
        let _ = tx.send(Exit {
            slot: i,
            generation,
            status,
        });
    });
    Ok(())
}

fn describe(status: &std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => "unknown exit".into(),
        },
        Err(e) => format!("wait failed: {e}"),
    }
}

fn on_exit(config: &Config, slots: &mut [Slot], exit: Exit) {
    let Some(slot) = slots.get_mut(exit.slot) else {
        return;
    };
    if exit.generation != slot.generation {
        return; // an old process replaced by reload
    }
    let how = describe(&exit.status);
    let lived = slot.started.elapsed();
    slot.child = None;
    slot.last_exit = Some(how.clone());
    slot.quick_deaths = if lived < Duration::from_secs(60) {
        slot.quick_deaths + 1
    } else {
        0
    };
    let delay = config
        .supervisor
        .restart_delay
        .saturating_mul(1 << slot.quick_deaths.saturating_sub(1).min(10))
        .min(Duration::from_secs(30));
    tracing::warn!(role = slot.role.arg(), index = slot.index, %how, lived = ?lived, restart_in = ?delay, "child died; restarting");
    slot.restart_at = Some(Instant::now() + delay);
}

/// Replaces workers one at a time: the new one starts and connects before the old one
/// drains, so some worker always serves.
async fn reload(
    config: &Config,
    exe: &Path,
    config_path: &Path,
    slots: &mut [Slot],
    exit_tx: &mpsc::UnboundedSender<Exit>,
    exit_rx: &mut mpsc::UnboundedReceiver<Exit>,
) {
    reload_certificates(slots);
    tracing::info!("reload: replacing workers one at a time");
    let run_dir = config.run_dir();
    for i in 0..slots.len() {
        if slots[i].role != ChildRole::Worker {
            continue;
        }
        let old = slots[i].child;
        let gateways_known = stats::read_all(&run_dir)
            .iter()
            .filter(|s| s.role == "worker" && Some(s.pid) == old)
            .map(|s| s.clients)
            .max()
            .unwrap_or(0);
        if let Err(e) = spawn_child(exe, config_path, slots, i, exit_tx) {
            tracing::error!(error = %e, "reload: cannot start a new worker; keeping the old one");
            continue;
        }
        let new = slots[i].child.unwrap_or(0);
        // Wait until the new worker is connected to as many gateways as the old one.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ready = stats::read_all(&run_dir)
                .iter()
                .any(|s| s.role == "worker" && s.pid == new && s.clients >= gateways_known.max(1));
            if ready || Instant::now() > deadline {
                if !ready {
                    tracing::warn!(
                        pid = new,
                        "reload: new worker not connected to every gateway after 10 s; going on"
                    );
                }
                break;
            }
            // Exits of other children are still handled while we wait.
            tokio::select! {
                Some(exit) = exit_rx.recv() => on_exit(config, slots, exit),
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        if let Some(old) = old {
            tracing::info!(old, new, "reload: draining the old worker");
            process::signal(old, libc::SIGTERM);
            let deadline = Instant::now() + config.worker.drain_timeout + Duration::from_secs(5);
            while process::alive(old) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if process::alive(old) {
                tracing::warn!(old, "reload: old worker did not exit; killing it");
                process::signal(old, libc::SIGKILL);
            }
        }
    }
    tracing::info!("reload: done");
}

/// Has every gateway re-read its TLS certificates (SIGHUP); clients stay connected.
fn reload_certificates(slots: &[Slot]) {
    for slot in slots.iter().filter(|s| s.role == ChildRole::Gateway) {
        if let Some(pid) = slot.child {
            process::signal(pid, libc::SIGHUP);
        }
    }
    tracing::info!("gateways asked to re-read their certificates");
}

async fn stop_children(
    config: &Config,
    slots: &mut [Slot],
    exit_rx: &mut mpsc::UnboundedReceiver<Exit>,
    graceful: bool,
) {
    let timeout = if graceful {
        config
            .worker
            .drain_timeout
            .max(config.supervisor.stop_timeout)
    } else {
        config.supervisor.stop_timeout
    };
    tracing::info!(?timeout, graceful, "stopping children");
    for role in [ChildRole::Worker, ChildRole::Gateway] {
        let pids: Vec<u32> = slots
            .iter()
            .filter(|s| s.role == role)
            .filter_map(|s| s.child)
            .collect();
        for pid in &pids {
            process::signal(*pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        while slots.iter().any(|s| s.role == role && s.child.is_some()) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, exit_rx.recv()).await {
                Ok(Some(exit)) => {
                    if let Some(slot) = slots.get_mut(exit.slot) {
                        if slot.generation == exit.generation {
                            tracing::info!(role = slot.role.arg(), index = slot.index, how = %describe(&exit.status), "child stopped");
                            slot.child = None;
                        }
                    }
                }
                _ => {
                    for slot in slots.iter_mut().filter(|s| s.role == role) {
                        if let Some(pid) = slot.child.take() {
                            tracing::warn!(
                                role = slot.role.arg(),
                                pid,
                                "child did not stop in time; killing it"
                            );
                            process::signal(pid, libc::SIGKILL);
                        }
                    }
                    break;
                }
            }
        }
    }
}

fn write_state(config: &Config, started: u64, slots: &[Slot]) {
    let state = SupervisorState {
        pid: std::process::id(),
        started,
        children: slots
            .iter()
            .map(|s| ChildState {
                role: s.role,
                index: s.index,
                pid: s.child.unwrap_or(0),
                started: s.started_unix,
                restarts: s.restarts,
                state: if s.child.is_some() {
                    "running"
                } else if s.quick_deaths >= 3 {
                    "crash-loop"
                } else {
                    "restarting"
                }
                .into(),
                last_exit: s.last_exit.clone(),
            })
            .collect(),
    };
    let path = state_file(config);
    let tmp = path.with_extension("json.tmp");
    let ok = std::fs::write(&tmp, serde_json::to_vec_pretty(&state).unwrap_or_default())
        .and_then(|_| std::fs::rename(&tmp, &path));
    if let Err(e) = ok {
        tracing::debug!(error = %e, "cannot write supervisor state");
    }
}

/// Reads the state file of a running supervisor.
pub fn read_state(config: &Config) -> Option<SupervisorState> {
    let bytes = std::fs::read(state_file(config)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Sends `sig` to the running supervisor and, for stop signals, waits until it exits.
pub fn signal_running(
    config: &Config,
    sig: libc::c_int,
    wait: Option<Duration>,
) -> Result<u32, Error> {
    let pid = running_pid(config).ok_or_else(|| {
        Error::Other(format!(
            "not running (no live supervisor in {})",
            pid_file(config).display()
        ))
    })?;
    if !process::signal(pid, sig) {
        return Err(Error::Other(format!("cannot signal supervisor pid {pid}")));
    }
    if let Some(wait) = wait {
        let deadline = Instant::now() + wait;
        while process::alive(pid) {
            if Instant::now() > deadline {
                return Err(Error::Other(format!(
                    "supervisor pid {pid} did not stop within {wait:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(pid)
}

/// Removes a file when dropped (the admin address file, on every way out of `run`).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Children by role, for display.
pub fn by_role(state: &SupervisorState) -> BTreeMap<ChildRole, Vec<&ChildState>> {
    let mut map: BTreeMap<ChildRole, Vec<&ChildState>> = BTreeMap::new();
    for c in &state.children {
        map.entry(c.role).or_default().push(c);
    }
    map
}
