//! Real web services to profile under load: PostgreSQL, a Flask app on gunicorn sync workers,
//! a Starlette app on uvicorn (asyncio), and `wrk` as the load generator, all on 127.0.0.1.
//!
//! Every piece is a value that owns its processes and files: dropping it stops the processes
//! (the whole process group for the web servers, `pg_ctl stop -m fast` for PostgreSQL) and
//! removes its temporary directory, so a failing test leaves nothing running.
//!
//! What they need is installed on first use, idempotently: Debian's `wrk`, `postgresql` and
//! `python3-venv` when missing (apt-get, as root), and a virtualenv built with Debian's
//! `/usr/bin/python3` from `tests/services/requirements.txt`, cached under
//! `target/tmp/services-venv/<hash of the requirements and interpreter>`.
//!
//! ```no_run
//! use integration_tests::services::*;
//! let flask = FlaskService::start(3);
//! let report = Load::new(flask.gunicorn.port(), &["/cpu", "/db"]).duration_secs(2).run();
//! println!("{:.0} req/s, p99 {:?}", report.requests_per_sec(), report.latency_p99);
//! ```
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use crate::target_dir;

/// The directory of the service sources (tests/services).
pub fn services_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("services")
}

/// A TCP port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------------------------
// Installing what the services need
// ---------------------------------------------------------------------------------------------

/// Installs Debian packages with apt-get (as root; the tests run as root). Serialized within
/// this process; apt's own lock serializes against others.
pub fn apt_install(packages: &[&str]) {
    static APT: Mutex<()> = Mutex::new(());
    let _guard = APT.lock().unwrap_or_else(|e| e.into_inner());
    crate::require_root();
    eprintln!("services: installing {} from Debian (one-time)", packages.join(" "));
    let run = |args: &[&str]| {
        let out = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .unwrap_or_else(|e| panic!("run apt-get: {e}"));
        assert!(
            out.status.success(),
            "apt-get {} failed: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["update", "-qq"]);
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend_from_slice(packages);
    run(&args);
}

/// `wrk` (Debian's package), installed when missing.
pub fn wrk_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = PathBuf::from("/usr/bin/wrk");
        if !bin.exists() {
            apt_install(&["wrk"]);
        }
        assert!(bin.exists(), "wrk still missing after apt-get install wrk");
        bin
    })
    .clone()
}

/// The newest PostgreSQL server's bin directory (`/usr/lib/postgresql/N/bin`), installing
/// Debian's `postgresql` when none is there. (Debian's policy-rc.d in containers keeps the
/// package's own cluster from starting; tests use a private one anyway.)
pub fn postgres_bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let find = || {
            let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| {
                    let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                    let bin = e.path().join("bin");
                    ["postgres", "initdb", "pg_ctl", "psql"]
                        .iter()
                        .all(|b| bin.join(b).exists())
                        .then_some((version, bin))
                })
                .collect();
            found.sort();
            found.pop().map(|(_, bin)| bin)
        };
        if let Some(bin) = find() {
            return bin;
        }
        apt_install(&["postgresql"]);
        find().expect("no PostgreSQL server under /usr/lib/postgresql after apt-get install postgresql")
    })
    .clone()
}

/// A virtualenv with the services' requirements, built once per requirements file.
#[derive(Debug, Clone)]
pub struct PythonEnv {
    pub dir: PathBuf,
    /// `dir/bin/python`.
    pub python: PathBuf,
    /// e.g. "3.11.2".
    pub version: String,
}

/// The interpreter the venv is built with: Debian's python3.
pub const BASE_PYTHON: &str = "/usr/bin/python3";

/// The services' virtualenv: built on first use (about 10 s with a warm pip cache), then
/// reused while requirements.txt and the interpreter are unchanged. Safe against concurrent
/// builders (a lock file) and interrupted builds (a marker written last).
pub fn python_env() -> &'static PythonEnv {
    static ENV: OnceLock<PythonEnv> = OnceLock::new();
    ENV.get_or_init(build_python_env)
}

fn build_python_env() -> PythonEnv {
    use std::hash::{Hash, Hasher};
    let base = Path::new(BASE_PYTHON);
    assert!(base.exists(), "{BASE_PYTHON} not found: the services need Debian's python3");
    let version = python_version(base);
    // `python3 -m venv` needs ensurepip, which Debian ships in python3-venv.
    let has_venv = Command::new(base)
        .args(["-c", "import ensurepip, venv"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_venv {
        apt_install(&["python3-venv"]);
    }
    let requirements = services_dir().join("requirements.txt");
    let text = std::fs::read_to_string(&requirements).unwrap();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (text.as_str(), version.as_str(), BASE_PYTHON).hash(&mut h);
    let root = target_dir().join("tmp/services-venv");
    std::fs::create_dir_all(&root).unwrap();
    let dir = root.join(format!("{:016x}", h.finish()));
    let env = PythonEnv { python: dir.join("bin/python"), dir: dir.clone(), version };
    let marker = dir.join(".complete");
    let _lock = FileLock::acquire(&root.join("lock"));
    if marker.exists() {
        return env;
    }
    eprintln!("services: building the Python virtualenv in {} (one-time)", dir.display());
    let started = Instant::now();
    let _ = std::fs::remove_dir_all(&dir);
    run_checked(Command::new(base).args(["-m", "venv"]).arg(&dir), "python3 -m venv");
    run_checked(
        Command::new(&env.python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input", "-r"])
            .arg(&requirements),
        "pip install -r tests/services/requirements.txt",
    );
    std::fs::write(&marker, &text).unwrap();
    eprintln!("services: virtualenv built in {:.1} s", started.elapsed().as_secs_f64());
    env
}

fn python_version(python: &Path) -> String {
    let out = Command::new(python)
        .args(["-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"])
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", python.display()));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// An exclusive flock on a file, released on drop.
struct FileLock(std::fs::File);

impl FileLock {
    fn acquire(path: &Path) -> Self {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).unwrap();
        // SAFETY: flock on a descriptor we own.
        assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0, "flock {}", path.display());
        FileLock(f)
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: as above.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

fn run_checked(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------------

/// The role, password and database the apps use.
pub const PG_USER: &str = "pyebpf";
pub const PG_PASSWORD: &str = "pyebpf";
pub const PG_DATABASE: &str = "pyebpf";

/// A private PostgreSQL cluster: data and unix socket in a temporary directory, TCP on
/// 127.0.0.1 only, on a free port, run as the `postgres` user (the server refuses root).
/// Stopped with `pg_ctl stop -m fast` and deleted on drop.
pub struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    uid: u32,
    gid: u32,
    pid: u32,
}

impl Postgres {
    pub fn start() -> Self {
        crate::require_root();
        let bin = postgres_bin_dir();
        let (uid, gid) = user_ids("postgres").expect("no `postgres` user (Debian's postgresql package creates it)");
        let dir = tempfile::Builder::new().prefix("pyebpf-pg-").tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sock")).unwrap();
        for p in [dir.path().to_path_buf(), dir.path().join("sock")] {
            std::os::unix::fs::chown(&p, Some(uid), Some(gid)).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        let as_postgres = |program: &str| {
            let mut cmd = Command::new(bin.join(program));
            cmd.uid(uid).gid(gid).current_dir(dir.path()).env("HOME", dir.path()).env_remove("PGDATA");
            cmd
        };
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, "postgres-superuser\n").unwrap();
        std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).unwrap();
        run_checked(
            as_postgres("initdb")
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8"])
                .args(["--locale=C", "--no-sync", "--no-instructions"])
                .arg(format!("--pwfile={}", pwfile.display())),
            "initdb",
        );
        // A free port can be taken between the check and the bind: try a few.
        let mut last_error = String::new();
        for _ in 0..3 {
            let port = free_port();
            let options = format!(
                "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off -c synchronous_commit=off \
                 -c full_page_writes=off -c max_connections=40 -c shared_buffers=32MB",
                dir.path().join("sock").display()
            );
            let out = as_postgres("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.path().join("postgres.log"))
                .args(["-w", "-t", "30", "-o", &options, "start"])
                .output()
                .expect("run pg_ctl");
            if out.status.success() {
                let pid = std::fs::read_to_string(data.join("postmaster.pid")).unwrap();
                let pid = pid.lines().next().unwrap().trim().parse().unwrap();
                let pg = Postgres { bin, dir, port, uid, gid, pid };
                pg.psql(&format!("CREATE ROLE {PG_USER} LOGIN PASSWORD '{PG_PASSWORD}'"));
                pg.psql(&format!("CREATE DATABASE {PG_DATABASE} OWNER {PG_USER}"));
                return pg;
            }
            last_error = format!(
                "{}{}\nlog: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(dir.path().join("postgres.log")).unwrap_or_default()
            );
        }
        panic!("PostgreSQL did not start: {last_error}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// libpq key=value connection string for the apps' role over TCP (psycopg).
    pub fn dsn(&self) -> String {
        format!("host=127.0.0.1 port={} dbname={PG_DATABASE} user={PG_USER} password={PG_PASSWORD}", self.port)
    }

    /// The same as a URL (asyncpg).
    pub fn url(&self) -> String {
        format!("postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{}/{PG_DATABASE}", self.port)
    }

    /// Runs SQL as the superuser over the private unix socket; returns psql's unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        run_checked(
            Command::new(self.bin.join("psql"))
                .arg("-h")
                .arg(self.dir.path().join("sock"))
                .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", "postgres"])
                .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]),
            &format!("psql -c {sql:?}"),
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let stopped = Command::new(self.bin.join("pg_ctl"))
            .uid(self.uid)
            .gid(self.gid)
            .current_dir(self.dir.path())
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "fast", "-w", "-t", "20", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !stopped {
            // SAFETY: signalling the postmaster we started; SIGQUIT is its immediate shutdown.
            unsafe { libc::kill(self.pid as i32, libc::SIGQUIT) };
            std::thread::sleep(Duration::from_millis(500));
            // SAFETY: as above; SIGKILL if it has not stopped yet.
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        }
    }
}

/// uid and gid of a user, from the password database.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: getpwnam returns a pointer to static storage or null; read at once.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    // SAFETY: non-null pointers from getpwnam point to a valid passwd.
    (!pw.is_null()).then(|| unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

// ---------------------------------------------------------------------------------------------
// Web servers
// ---------------------------------------------------------------------------------------------

/// A web server started in its own process group, logging to a file in its temporary
/// directory. Dropping it sends SIGINT to the group (gunicorn: quick shutdown; uvicorn:
/// shutdown), waits up to 5 s, then SIGKILLs whatever is left of the group.
pub struct WebServer {
    name: &'static str,
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl WebServer {
    /// Starts `python -m MODULE ARGS...` from tests/services with `env`, and waits until
    /// `GET /health` answers 200 (at most 30 s).
    fn spawn(name: &'static str, python: &Path, module_args: &[String], env: &[(&str, String)], port: u16) -> Self {
        let dir = tempfile::Builder::new().prefix(&format!("pyebpf-{name}-")).tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let mut cmd = Command::new(python);
        cmd.arg("-m")
            .args(module_args)
            .current_dir(services_dir())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        let mut server = WebServer { name, child, port, dir };
        server.wait_healthy(Duration::from_secs(30));
        server
    }

    fn wait_healthy(&mut self, timeout: Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{} exited during start-up ({status}):\n{}", self.name, self.log());
            }
            if matches!(http_get(self.port, "/health"), Ok((200, _))) {
                return;
            }
            if start.elapsed() > timeout {
                panic!("{} not healthy on port {} after {timeout:?}:\n{}", self.name, self.port, self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's main process (gunicorn's master, uvicorn's only process).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Child processes of the main process (gunicorn's workers).
    pub fn children(&self) -> Vec<u32> {
        children_of(self.pid())
    }

    /// Everything the server wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// `GET path` on the server: (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.port, path).unwrap_or_else(|e| panic!("GET {path} on {}: {e}\n{}", self.name, self.log()))
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        let pgid = self.child.id() as i32;
        // SAFETY: signalling the process group we created (process_group(0) at spawn).
        unsafe { libc::kill(-pgid, libc::SIGINT) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if self.child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above; ESRCH when the group is already gone.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// tests/services/aiohttp_app.py with `args` (`--role`, ...), listening on `port`.
pub fn start_aiohttp(env: &PythonEnv, port: u16, args: &[&str]) -> WebServer {
    let mut module_args = vec!["aiohttp_app".to_string(), "--port".to_string(), port.to_string()];
    module_args.extend(args.iter().map(|a| a.to_string()));
    WebServer::spawn("aiohttp", &env.python, &module_args, &[], port)
}

/// Pids whose parent is `pid` (from /proc/PID/stat).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).ok().and_then(|s| {
                // Fields after the command (which may hold spaces and parentheses): state ppid ...
                let rest = &s[s.rfind(')')? + 2..];
                rest.split_whitespace().nth(1)?.parse::<u32>().ok()
            }) == Some(pid)
        })
        .collect();
    out.sort_unstable();
    out
}

/// A minimal HTTP/1.1 GET on 127.0.0.1 (Connection: close), for health checks and smoke tests.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {response:?}")))?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// gunicorn serving tests/services/flask_app.py with `workers` sync workers on 127.0.0.1.
/// The app is preloaded in the master, so workers are ready as soon as they are forked.
pub fn start_gunicorn(env: &PythonEnv, pg: &Postgres, workers: u32, fsync_dir: &Path) -> WebServer {
    start_gunicorn_with(env, pg, fsync_dir, &Gunicorn { workers, worker_class: "sync", threads: 1 })
}

/// How gunicorn runs the app: worker processes, worker class (`sync`, `gthread`), and
/// threads per worker (gthread).
#[derive(Debug, Clone)]
pub struct Gunicorn {
    pub workers: u32,
    pub worker_class: &'static str,
    pub threads: u32,
}

/// gunicorn serving tests/services/flask_app.py as configured, on 127.0.0.1.
pub fn start_gunicorn_with(env: &PythonEnv, pg: &Postgres, fsync_dir: &Path, config: &Gunicorn) -> WebServer {
    start_gunicorn_with_args(env, pg, fsync_dir, config, &[])
}

/// [`start_gunicorn_with`], with more gunicorn options (`--max-requests 20`...).
pub fn start_gunicorn_with_args(
    env: &PythonEnv,
    pg: &Postgres,
    fsync_dir: &Path,
    config: &Gunicorn,
    extra: &[&str],
) -> WebServer {
    let port = free_port();
    let workers = config.workers;
    let args: Vec<String> = [
        "gunicorn",
        "--workers",
        &workers.to_string(),
        "--worker-class",
        config.worker_class,
        "--threads",
        &config.threads.to_string(),
        "--bind",
        &format!("127.0.0.1:{port}"),
        "--preload",
        "--graceful-timeout",
        "2",
        "--log-level",
        "warning",
    ]
    .into_iter()
    .chain(extra.iter().copied())
    .chain(["flask_app:app"])
    .map(String::from)
    .collect();
    let env_vars = [("PYEBPF_PG_DSN", pg.dsn()), ("PYEBPF_FSYNC_DIR", fsync_dir.display().to_string())];
    let server = WebServer::spawn("gunicorn", &env.python, &args, &env_vars, port);
    // Every worker forked (they take requests as soon as they exist: the app is preloaded).
    let start = Instant::now();
    while server.children().len() < workers as usize {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "gunicorn has {} of {workers} workers after 20 s:\n{}",
            server.children().len(),
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

/// uvicorn serving tests/services/asgi_app.py (Starlette) in one process on the asyncio loop.
pub fn start_uvicorn(env: &PythonEnv, pg: &Postgres) -> WebServer {
    let port = free_port();
    let args: Vec<String> = [
        "uvicorn",
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--workers",
        "1",
        "--loop",
        "asyncio",
        "--http",
        "h11",
        "--no-access-log",
        "--log-level",
        "warning",
        "--timeout-graceful-shutdown",
        "2",
        "asgi_app:app",
    ]
    .map(String::from)
    .to_vec();
    WebServer::spawn("uvicorn", &env.python, &args, &[("PYEBPF_PG_DSN", pg.url())], port)
}

/// PostgreSQL and the Flask app on gunicorn, with the directory /fsync writes into (on the
/// disk that holds target/, not a tmpfs, so fsync really waits). Dropped server first.
pub struct FlaskService {
    pub gunicorn: WebServer,
    pub postgres: Postgres,
    pub fsync_dir: tempfile::TempDir,
}

impl FlaskService {
    pub fn start(workers: u32) -> Self {
        Self::start_with(&Gunicorn { workers, worker_class: "sync", threads: 1 })
    }

    pub fn start_with(config: &Gunicorn) -> Self {
        Self::start_with_args(config, &[])
    }

    /// [`FlaskService::start_with`], with more gunicorn options.
    pub fn start_with_args(config: &Gunicorn, extra: &[&str]) -> Self {
        let env = python_env();
        let postgres = Postgres::start();
        let scratch = target_dir().join("tmp");
        std::fs::create_dir_all(&scratch).unwrap();
        // Canonical, as the profiler reports files (from /proc/PID/fd links).
        let scratch = std::fs::canonicalize(scratch).unwrap();
        let fsync_dir = tempfile::Builder::new().prefix("pyebpf-fsync-").tempdir_in(scratch).unwrap();
        let gunicorn = start_gunicorn_with_args(env, &postgres, fsync_dir.path(), config, extra);
        FlaskService { gunicorn, postgres, fsync_dir }
    }
}

/// PostgreSQL and the Starlette app on uvicorn. Dropped server first.
pub struct AsgiService {
    pub uvicorn: WebServer,
    pub postgres: Postgres,
}

impl AsgiService {
    pub fn start() -> Self {
        let env = python_env();
        let postgres = Postgres::start();
        let uvicorn = start_uvicorn(env, &postgres);
        AsgiService { uvicorn, postgres }
    }
}

// ---------------------------------------------------------------------------------------------
// Load: wrk
// ---------------------------------------------------------------------------------------------

/// A wrk run against 127.0.0.1:port, cycling through `paths`, for a bounded duration with a
/// bounded number of connections.
#[derive(Debug, Clone)]
pub struct Load {
    pub port: u16,
    pub paths: Vec<String>,
    pub duration: Duration,
    pub connections: u32,
    pub threads: u32,
    /// Per-request timeout.
    pub timeout: Duration,
}

/// What wrk measured (from its `done` hook: exact counts and its latency histogram).
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub requests: u64,
    pub duration: Duration,
    pub latency_p50: Duration,
    pub latency_p99: Duration,
    pub latency_max: Duration,
    pub latency_mean: Duration,
    pub errors_connect: u64,
    pub errors_read: u64,
    pub errors_write: u64,
    /// Responses with a status other than 2xx/3xx.
    pub errors_status: u64,
    pub errors_timeout: u64,
    /// wrk's own text output, for failure messages.
    pub output: String,
}

impl LoadReport {
    pub fn requests_per_sec(&self) -> f64 {
        self.requests as f64 / self.duration.as_secs_f64().max(1e-9)
    }

    /// Failed requests of any kind (wrk counts a server closing a connection after its
    /// response, as gunicorn's sync workers do, as a read error only when no response came).
    pub fn errors(&self) -> u64 {
        self.errors_connect + self.errors_read + self.errors_write + self.errors_status + self.errors_timeout
    }

    /// Panics with wrk's output unless requests were served without error.
    pub fn assert_clean(&self) {
        assert!(self.requests > 0 && self.errors() == 0, "load had errors or no requests: {self:?}");
    }
}

impl Load {
    pub fn new(port: u16, paths: &[&str]) -> Self {
        Load {
            port,
            paths: paths.iter().map(|p| p.to_string()).collect(),
            duration: Duration::from_secs(2),
            connections: 4,
            threads: 1,
            timeout: Duration::from_secs(5),
        }
    }

    /// wrk takes whole seconds.
    pub fn duration_secs(mut self, secs: u64) -> Self {
        self.duration = Duration::from_secs(secs);
        self
    }

    pub fn connections(mut self, n: u32) -> Self {
        self.connections = n;
        self
    }

    /// Starts wrk in the background.
    pub fn start(&self) -> RunningLoad {
        assert!(self.connections >= self.threads && self.threads > 0 && !self.paths.is_empty(), "{self:?}");
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("load.lua");
        let paths: Vec<String> = self.paths.iter().map(|p| format!("{p:?}")).collect();
        std::fs::write(&script, WRK_SCRIPT.replace("PATHS", &paths.join(", "))).unwrap();
        let child = Command::new(wrk_bin())
            .args(["-t", &self.threads.to_string(), "-c", &self.connections.to_string()])
            // wrk's durations are whole seconds.
            .args(["-d", &format!("{}s", self.duration.as_secs().max(1))])
            .args(["--timeout", &format!("{}s", self.timeout.as_secs().max(1))])
            .arg("--latency")
            .arg("-s")
            .arg(&script)
            .arg(format!("http://127.0.0.1:{}", self.port))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wrk");
        RunningLoad { child: Some(child), _dir: dir, limit: self.duration + self.timeout + Duration::from_secs(10) }
    }

    /// Runs wrk to completion.
    pub fn run(&self) -> LoadReport {
        self.start().wait()
    }
}

/// Cycles through the paths; `done` prints exact counts and percentiles on one line.
const WRK_SCRIPT: &str = r#"
local paths = { PATHS }
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", paths[(n % #paths) + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "pyebpf-wrk requests=%d duration_us=%d connect=%d read=%d write=%d status=%d timeout=%d p50_us=%d p99_us=%d max_us=%d mean_us=%d\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, latency.mean))
end
"#;

/// A wrk run in progress; killed on drop if not waited for.
pub struct RunningLoad {
    child: Option<Child>,
    _dir: tempfile::TempDir,
    limit: Duration,
}

impl RunningLoad {
    pub fn wait(mut self) -> LoadReport {
        let child = self.child.take().unwrap();
        let out = crate::wait_output(child, self.limit);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "wrk failed ({:?}):\n{text}", out.status);
        parse_wrk(&text).unwrap_or_else(|| panic!("no summary line in wrk's output:\n{text}"))
    }
}

impl Drop for RunningLoad {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn parse_wrk(text: &str) -> Option<LoadReport> {
    let line = text.lines().find_map(|l| l.strip_prefix("pyebpf-wrk "))?;
    let fields: std::collections::HashMap<&str, u64> = line
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
        .collect();
    let us = |k: &str| fields.get(k).map(|v| Duration::from_micros(*v));
    Some(LoadReport {
        requests: *fields.get("requests")?,
        duration: us("duration_us")?,
        latency_p50: us("p50_us")?,
        latency_p99: us("p99_us")?,
        latency_max: us("max_us")?,
        latency_mean: us("mean_us")?,
        errors_connect: *fields.get("connect")?,
        errors_read: *fields.get("read")?,
        errors_write: *fields.get("write")?,
        errors_status: *fields.get("status")?,
        errors_timeout: *fields.get("timeout")?,
        output: text.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_summary_line() {
        let r = parse_wrk(
            "Running 2s test\npyebpf-wrk requests=300 duration_us=2000000 connect=0 read=1 write=0 status=2 timeout=0 \
             p50_us=1500 p99_us=9000 max_us=12000 mean_us=2000\n",
        )
        .unwrap();
        assert_eq!(r.requests, 300);
        assert_eq!(r.requests_per_sec(), 150.0);
        assert_eq!(r.latency_p99, Duration::from_micros(9000));
        assert_eq!(r.errors(), 3);
        assert!(parse_wrk("Running 2s test\n").is_none());
    }
}
