//! A Redis Cluster for the cases: the one named by `POOLGATE_TEST_REDIS_CLUSTER`
//! (`redis-cluster://host:port,…`), or real `redis-server` processes in cluster mode on free
//! loopback ports, joined with `redis-cli --cluster create` and stopped with the test process.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::free_port;

/// A cluster this process started: `masters` masters, each with `replicas` replicas.
pub struct Cluster {
    pub ports: Vec<u16>,
    /// Each node's cluster bus port (beside `ports`), for a restart on the same ports.
    buses: Vec<u16>,
    /// The shell that runs the nodes; they stop (and their directory goes) when it or the
    /// test process ends.
    wrapper: Child,
    /// The shells of nodes started again ([`Cluster::restart_node`]).
    restarted: std::sync::Mutex<Vec<Child>>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts the nodes, creates the cluster and waits until every node says it is ok (and
    /// every replica is in sync with its master). Tried up to three times on fresh ports: a
    /// port found free may be taken before its node binds it (by another case's connection).
    pub fn start(masters: usize, replicas: usize) -> Cluster {
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Self::try_start(masters, replicas) {
                Ok(cluster) => return cluster,
                Err(why) => failures.push(why),
            }
        }
        panic!("cannot start a cluster: {failures:#?}");
    }

    fn try_start(masters: usize, replicas: usize) -> Result<Cluster, String> {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..masters * (1 + replicas)).map(|_| free_port()).collect();
        // The cluster bus on a port of its own: by default it is port + 10000, which may be
        // taken, or past 65535.
        let buses: Vec<u16> = ports.iter().map(|_| free_port()).collect();
        let wrapper = supervise(dir.path(), &ports, &buses);
        let cluster = Cluster {
            ports,
            buses,
            wrapper,
            restarted: std::sync::Mutex::new(Vec::new()),
            dir,
        };
        for port in &cluster.ports {
            // PING, not a bare connect: something else may hold the port.
            cluster.wait_until(&format!("node {port} to answer"), || {
                Self::cli(*port, &["ping"]).trim() == "PONG"
            })?;
        }
        let addresses: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("cannot run redis-cli (Debian: apt-get install redis-server)");
        if !created.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&created.stdout),
                String::from_utf8_lossy(&created.stderr)
            ));
        }
        cluster.wait_until("the cluster to be ok on every node", || {
            cluster.ports.iter().all(|p| cluster.ok(*p))
        })?;
        Ok(cluster)
    }

    /// `redis-cluster://` URL naming every node as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis-cluster://{}", seeds.join(","))
    }

    /// What `redis-cli -p port args…` prints ("" when the node does not answer).
    pub fn cli(port: u16, args: &[&str]) -> String {
        Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// The node says the cluster is ok, and, if it is a replica, its master link is up.
    fn ok(&self, port: u16) -> bool {
        let info = Self::cli(port, &["cluster", "info"]);
        let replication = Self::cli(port, &["info", "replication"]);
        info.contains("cluster_state:ok")
            && (replication.contains("role:master")
                || replication.contains("master_link_status:up"))
    }

    /// The nodes that are masters now and answer.
    pub fn masters(&self) -> Vec<u16> {
        self.ports
            .iter()
            .copied()
            .filter(|p| Self::cli(*p, &["info", "replication"]).contains("role:master"))
            .collect()
    }

    /// The master holding a key matching `pattern`, if any does.
    pub fn master_holding(&self, pattern: &str) -> Option<u16> {
        self.masters().into_iter().find(|p| {
            !Self::cli(*p, &["--scan", "--pattern", pattern])
                .trim()
                .is_empty()
        })
    }

    /// Kills a node with SIGKILL (no goodbye to the cluster).
    pub fn kill_node(&self, port: u16) {
        Self::signal(&Self::pid(port), "-KILL");
        self.wait_for(&format!("node {port} to be gone"), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        });
    }

    /// Starts a node killed by [`Cluster::kill_node`] again, on its ports and with its cluster
    /// config file (so it rejoins as the node it was) but empty: these nodes keep no data
    /// files. Waits until it answers.
    pub fn restart_node(&self, port: u16) {
        let i = self.ports.iter().position(|p| *p == port).expect("a node");
        let shell = supervise(self.dir.path(), &[port], &[self.buses[i]]);
        self.restarted.lock().unwrap().push(shell);
        self.wait_for(&format!("node {port} to answer again"), || {
            Self::cli(port, &["ping"]).trim() == "PONG"
        });
    }

    /// Stops a node with SIGSTOP: it holds its connections open and answers nothing (a host
    /// that froze, a long pause); [`Cluster::continue_node`] with what this returns resumes it.
    pub fn stop_node(&self, port: u16) -> String {
        let pid = Self::pid(port);
        Self::signal(&pid, "-STOP");
        pid
    }

    pub fn continue_node(&self, pid: &str) {
        Self::signal(pid, "-CONT");
    }

    /// A node's process id, as it says.
    fn pid(port: u16) -> String {
        Self::cli(port, &["info", "server"])
            .lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .expect("the node answers with its process id")
            .trim()
            .to_owned()
    }

    fn signal(pid: &str, signal: &str) {
        let sent = Command::new("kill").args([signal, pid]).status().unwrap();
        assert!(sent.success(), "kill {signal} {pid}");
    }

    /// Waits until the surviving nodes agree that the cluster is ok again (a replica took over).
    pub fn wait_until_ok_without(&self, dead: u16) {
        self.wait_for("the cluster to be ok after the failover", || {
            self.ports
                .iter()
                .filter(|p| **p != dead)
                .all(|p| Self::cli(*p, &["cluster", "info"]).contains("cluster_state:ok"))
        });
    }

    fn wait_for(&self, what: &str, ready: impl FnMut() -> bool) {
        self.wait_until(what, ready)
            .unwrap_or_else(|why| panic!("{why}"));
    }

    fn wait_until(&self, what: &str, mut ready: impl FnMut() -> bool) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready() {
            if Instant::now() >= deadline {
                return Err(format!("timed out waiting for {what}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let restarted = self.restarted.get_mut().unwrap();
        for shell in restarted.iter_mut().chain([&mut self.wrapper]) {
            let _ = Command::new("kill")
                .args(["-TERM", &shell.id().to_string()])
                .status();
            let _ = shell.wait();
        }
    }
}

/// A shell running the nodes on `ports` (cluster bus on `buses`), each in its directory
/// under `dir` where it keeps its cluster config file. It watches its parent (this test
/// process) and stops the nodes when it is gone or told to (SIGTERM) — a stopped one too.
fn supervise(dir: &std::path::Path, ports: &[u16], buses: &[u16]) -> Child {
    // Failover within about two seconds of a master's death.
    let nodes: String = ports
        .iter()
        .zip(buses)
        .map(|(port, bus)| {
            format!(
                "mkdir -p {d}/{port} && (cd {d}/{port} && exec redis-server --port {port} \
                 --cluster-port {bus} --bind 127.0.0.1 --cluster-enabled yes \
                 --cluster-config-file nodes.conf --cluster-node-timeout 1000 --save '' \
                 --appendonly no --daemonize no) & pids=\"$pids $!\"; ",
                d = dir.display(),
            )
        })
        .collect();
    let script = format!(
        "pids=''; {nodes} trap 'kill $pids 2>/dev/null; kill -CONT $pids 2>/dev/null; exit 0' TERM; \
         while kill -0 {parent} 2>/dev/null; do sleep 0.2; done; \
         kill $pids 2>/dev/null; kill -CONT $pids 2>/dev/null",
        parent = std::process::id()
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::null())
        .spawn()
        .expect("cannot run sh to start redis-server")
}

/// The cluster the backend suite runs on: `POOLGATE_TEST_REDIS_CLUSTER` if set, else three
/// masters started once per test process.
pub fn cluster_url() -> String {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("POOLGATE_TEST_REDIS_CLUSTER") {
            return url;
        }
        static CLUSTER: std::sync::Mutex<Option<Cluster>> = std::sync::Mutex::new(None);
        let cluster = Cluster::start(3, 0);
        let url = cluster.url();
        // Kept for the process's life; the wrapper stops the nodes with us.
        *CLUSTER.lock().unwrap() = Some(cluster);
        url
    })
    .clone()
}

/// Whether this machine can start a cluster: `redis-server` and `redis-cli` on the PATH.
pub fn can_start() -> Option<(PathBuf, PathBuf)> {
    Some((
        crate::harness::on_path("redis-server")?,
        crate::harness::on_path("redis-cli")?,
    ))
}
