//! Scale-out: gateway-only and worker-only "machines" (supervisors started with
//! `--only`, on loopback addresses 127.0.0.2 and 127.0.0.3) sharing one store — file,
//! memcached or Redis — and the chat working across gateways; discovery as gateways come
//! and go; the store going down and coming back under traffic.
//!
//! memcached and Redis tests read `SWITCHBOARD_TEST_MEMCACHED` / `SWITCHBOARD_TEST_REDIS_URL`
//! (set by scripts/services.sh). Without a reachable server they skip loudly — except in
//! CI (`CI` set), where they fail.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{chat_bin, ChatClient};
use switchboard::stats;
use switchboard_testkit::{free_port, spawn, Client, WAIT};

/// One supervisor started with `--only`, standing for one machine.
struct Node {
    dir: tempfile::TempDir,
    child: Option<Child>,
    run_dir: PathBuf,
}

impl Node {
    /// A supervisor running `count` processes of `role` on `host`; its gateways' client
    /// listener is on port 0 (see [`Node::listener`]).
    fn start(store: &str, name: &str, role: &str, host: &str, count: usize) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let text = format!(
            r#"name = "{name}"
secret = "scale-secret"
data_dir = "{data}"

{store}

[gateway]
count = {gw_count}
internal_listen = "{host}:0"
publish_interval = "300ms"

[[gateway.listeners]]
listen = "{host}:0"

[worker]
count = {w_count}
discovery_interval = "200ms"

[supervisor]
restart_delay = "200ms"

[admin]
listen = "127.0.0.1:0"
"#,
            data = data.display(),
            gw_count = if role == "gateway" { count } else { 1 },
            w_count = if role == "worker" { count } else { 1 },
        );
        let config_path = dir.path().join("node.toml");
        std::fs::write(&config_path, text).unwrap();
        let log = std::fs::File::create(dir.path().join("node.log")).unwrap();
        let child = spawn(
            chat_bin().as_ref(),
            &config_path,
            &["start", "--only", role],
            log,
        );
        Node {
            run_dir: data.join("run"),
            child: Some(child),
            dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    /// Waits until this node's gateways each see `workers` workers, or this node's
    /// workers each see `gateways` gateways.
    fn wait(&self, role: &str, expect: u64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let all = stats::read_all(&self.run_dir);
            let mine: Vec<_> = all.iter().filter(|s| s.role == role).collect();
            let ok = !mine.is_empty()
                && mine.iter().all(|s| match role {
                    "gateway" => s.detail.get("workers").and_then(|v| v.as_u64()) == Some(expect),
                    _ => s.clients == expect,
                });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{role} node not ready ({expect}): {all:#?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The address this node's gateways bound for their client listener (port 0 in the
    /// configuration), from their stats files.
    fn listener(&self) -> SocketAddr {
        let deadline = Instant::now() + WAIT;
        loop {
            let bound = stats::read_all(&self.run_dir)
                .into_iter()
                .filter(|s| s.role == "gateway")
                .find_map(|s| s.detail.get("listeners")?.get(0)?.as_str()?.parse().ok());
            if let Some(addr) = bound {
                return addr;
            }
            assert!(
                Instant::now() < deadline,
                "no gateway of this node reported its listener:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

fn unique(name: &str) -> String {
    format!("{name}-{}-{}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

/// The address of a service from the environment, or a loud skip (a failure in CI).
fn service(var: &str, default: Option<&str>) -> Option<String> {
    let value = std::env::var(var).ok().or(default.map(str::to_owned));
    let reachable = value.as_deref().is_some_and(|v| {
        let hostport = v
            .trim_start_matches("redis://")
            .split(',')
            .next()
            .unwrap_or("")
            .trim_end_matches('/');
        hostport.parse::<SocketAddr>().ok().is_some_and(|a| {
            std::net::TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok()
        })
    });
    if reachable {
        return value;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{var} is not set or not reachable ({value:?}); CI must provide it (scripts/services.sh)");
    }
    eprintln!("SKIPPED: no service for {var} ({value:?}); run scripts/services.sh first");
    None
}

/// Two gateway machines (127.0.0.2, 127.0.0.3) and one worker machine with 2 workers;
/// clients on both gateways chat with each other.
async fn two_by_two(store: String) {
    let name = unique("scale");
    let gw_a = Node::start(&store, &name, "gateway", "127.0.0.2", 1);
    let gw_b = Node::start(&store, &name, "gateway", "127.0.0.3", 1);
    let workers = Node::start(&store, &name, "worker", "127.0.0.1", 2);
    gw_a.wait("gateway", 2);
    gw_b.wait("gateway", 2);
    workers.wait("worker", 2);

    let mut a = Client::connect(gw_a.listener()).await;
    let ida = a.login("alice").await;
    let mut b = Client::connect(gw_b.listener()).await;
    let idb = b.login("bob").await;
    assert_ne!(
        ida.gateway, idb.gateway,
        "the clients are on different gateways"
    );
    a.expect_next(&format!("bob[{idb}] come")).await;
    // Broadcast across gateways.
    b.send("hello from B").await;
    a.expect_next(&format!("bob[{idb}] said :hello from B"))
        .await;
    b.expect_next(&format!("bob[{idb}] said :hello from B"))
        .await;
    // Private across gateways, both ways.
    a.send(&format!("{idb}:psst")).await;
    b.expect_next(&format!("alice[{ida}] said to You :psst"))
        .await;
    a.expect_next(&format!("alice[{ida}] said to [{idb}] :psst"))
        .await;
    b.send(&format!("{ida}:back")).await;
    a.expect_next(&format!("bob[{idb}] said to You :back"))
        .await;
    b.expect_next(&format!("bob[{idb}] said to [{ida}] :back"))
        .await;
    // Many messages across, none lost.
    for n in 0..200 {
        a.send(&format!("{idb}:n{n}")).await;
    }
    for n in 0..200 {
        b.expect_next(&format!("alice[{ida}] said to You :n{n}"))
            .await;
    }
    drop(a);
    b.expect(&format!("alice[{ida}] logout")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_two_workers_on_two_hosts_with_the_file_store() {
    let shared = tempfile::tempdir().unwrap();
    let store = format!(
        "[store]\nbackend = \"file\"\npath = \"{}\"",
        shared.path().join("store.sqlite").display()
    );
    two_by_two(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_two_workers_on_two_hosts_with_memcached() {
    let Some(servers) = service("SWITCHBOARD_TEST_MEMCACHED", None) else {
        return;
    };
    let list: Vec<String> = servers.split(',').map(|s| format!("\"{s}\"")).collect();
    two_by_two(format!(
        "[store]\nbackend = \"memcached\"\nservers = [{}]",
        list.join(", ")
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_two_workers_on_two_hosts_with_redis() {
    let Some(url) = service("SWITCHBOARD_TEST_REDIS_URL", Some("redis://127.0.0.1:6379")) else {
        return;
    };
    two_by_two(format!("[store]\nbackend = \"redis\"\nurl = \"{url}\"")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_follow_gateways_that_come_and_go() {
    let shared = tempfile::tempdir().unwrap();
    let store = format!(
        "[store]\nbackend = \"file\"\npath = \"{}\"",
        shared.path().join("store.sqlite").display()
    );
    let name = unique("discovery");
    let workers = Node::start(&store, &name, "worker", "127.0.0.1", 2);
    let gw_a = Node::start(&store, &name, "gateway", "127.0.0.2", 1);
    gw_a.wait("gateway", 2);
    workers.wait("worker", 1);

    // A gateway added while the workers run is found within a few seconds.
    let added = Instant::now();
    let mut gw_b = Node::start(&store, &name, "gateway", "127.0.0.3", 1);
    gw_b.wait("gateway", 2);
    workers.wait("worker", 2);
    assert!(added.elapsed() < Duration::from_secs(10));
    let mut b = Client::connect(gw_b.listener()).await;
    b.login("on-new-gateway").await;

    // A gateway removed: the workers drop it, and the rest keeps working.
    gw_b.stop();
    workers.wait("worker", 1);
    // Its link closed first; the next discovery round forgets it.
    let deadline = Instant::now() + WAIT;
    while !workers.log().contains("gateway left the store") {
        assert!(Instant::now() < deadline, "{}", workers.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut a = Client::connect(gw_a.listener()).await;
    let ida = a.login("alice").await;
    a.send("still fine").await;
    a.expect_next(&format!("alice[{ida}] said :still fine"))
        .await;
}

/// A private memcached on a free port, killed on drop. memcached cannot tell which
/// port it got from port 0, and the test restarts it on the same one, so this is the
/// one place a port is picked before the server binds it ([`free_port`]: racy in
/// principle, for a third-party server only).
struct PrivateMemcached {
    child: Child,
}

impl PrivateMemcached {
    fn start(port: u16) -> Option<Self> {
        let child = Command::new("memcached")
            .args([
                "-u",
                "root",
                "-l",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-m",
                "16",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(PrivateMemcached { child })
    }
}

impl Drop for PrivateMemcached {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcached_down_and_restarted_empty_under_traffic_disconnects_nobody() {
    let mport = free_port();
    let Some(mc) = PrivateMemcached::start(mport) else {
        if std::env::var_os("CI").is_some() {
            panic!("cannot start memcached (scripts/services.sh installs it)");
        }
        eprintln!("SKIPPED: memcached is not installed; run scripts/services.sh first");
        return;
    };
    let store = format!("[store]\nbackend = \"memcached\"\nservers = [\"127.0.0.1:{mport}\"]");
    let name = unique("outage");
    let gw = Node::start(&store, &name, "gateway", "127.0.0.2", 1);
    let workers = Node::start(&store, &name, "worker", "127.0.0.1", 2);
    gw.wait("gateway", 2);
    let addr = gw.listener();
    let mut a = Client::connect(addr).await;
    let ida = a.login("alice").await;
    let mut b = Client::connect(addr).await;
    let idb = b.login("bob").await;

    // The store goes away: nobody is disconnected, known routes keep working.
    drop(mc);
    for n in 0..50 {
        a.send(&format!("{idb}:down {n}")).await;
        b.expect(&format!("alice[{ida}] said to You :down {n}"))
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + WAIT;
    while !gw
        .log()
        .contains("cannot publish this gateway in the store")
    {
        assert!(
            Instant::now() < deadline,
            "the outage was not logged:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // It comes back empty (a memcached restart): the gateway republishes itself, and a
    // worker started now still finds it.
    let _mc = PrivateMemcached::start(mport).expect("memcached restarts");
    let late = Node::start(&store, &name, "worker", "127.0.0.1", 1);
    late.wait("worker", 1);
    gw.wait("gateway", 3);
    assert!(gw.log().contains("republished"), "{}", gw.log());
    b.send(&format!("{ida}:after")).await;
    a.expect(&format!("bob[{idb}] said to You :after")).await;
    drop(workers);
}
