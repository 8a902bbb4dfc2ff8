//! A throw-away PostgreSQL server of the test's own: `initdb` in a temp dir, a free loopback
//! port, optionally TLS with a certificate from a CA made here (rcgen), stopped and removed when
//! dropped (also when the test panics) — the machine's cluster on 5432 is never touched. As root
//! the server runs as the `postgres` user (PostgreSQL refuses root). Without the server binaries
//! the test is skipped (`PUSHGATE_REQUIRE_ALL=1` makes that a failure).
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

use super::skip;
use super::worker_support::free_port;

/// Where the server binaries are, when not in Debian's `/usr/lib/postgresql/<version>/bin`.
pub const BINDIR: &str = "PUSHGATE_POSTGRES_BINDIR";

/// The superuser's password; tests check that no error message repeats it.
pub const PASSWORD: &str = "pg-tls-Secret-7f3a9c";

/// The names the server certificate is issued for (the test connects to `localhost`,
/// `127.0.0.1`, or [`CERT_DNS_NAME`] with `hostaddr=127.0.0.1`).
pub const CERT_DNS_NAME: &str = "db.pushgate.test";

/// How the server is set up.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// `ssl = on` with a certificate from [`PrivatePostgres::ca_file`], and only `hostssl` lines
    /// in pg_hba.conf (a connection without TLS is refused); off: `ssl = off`, `host` lines.
    pub tls: bool,
}

/// A CA (certificate in PEM) and the server certificate and key it issued.
struct Certificates {
    ca_pem: String,
    server_pem: String,
    server_key_pem: String,
}

/// A running private server; dropping it stops the server and deletes its files.
pub struct PrivatePostgres {
    postmaster: Child,
    pub port: u16,
    dir: tempfile::TempDir,
    log: PathBuf,
    /// How the postmaster was started, to start it again ([`PrivatePostgres::start_again`]).
    launch: Launch,
}

/// The postmaster's command line and owner.
#[derive(Debug, Clone)]
struct Launch {
    bindir: PathBuf,
    owner: Option<(u32, u32)>,
    data: PathBuf,
    settings: Vec<String>,
}

impl PrivatePostgres {
    /// `None` (after [`skip::skip`] said why) when this machine has no PostgreSQL server
    /// binaries or, as root, no `postgres` user to run them as.
    #[track_caller]
    pub fn start(options: Options) -> Option<PrivatePostgres> {
        let Some(bindir) = find_bindir() else {
            let where_ = match std::env::var(BINDIR) {
                Ok(dir) => format!("{BINDIR}={dir}"),
                Err(_) => format!("/usr/lib/postgresql/*/bin (or set {BINDIR})"),
            };
            skip::skip(format!(
                "no PostgreSQL server binaries (initdb, postgres) in {where_}; \
                 Debian: apt-get install postgresql"
            ));
            return None;
        };
        let owner = match server_owner() {
            Ok(owner) => owner,
            Err(why) => {
                skip::skip(why);
                return None;
            }
        };
        // A port taken between choosing and binding makes the server exit: start afresh on
        // another (at most three times).
        let mut failure = String::new();
        for _ in 0..3 {
            match Self::start_once(&bindir, owner, options) {
                Ok(server) => return Some(server),
                Err(why) if why.contains("could not bind") => failure = why,
                Err(why) => panic!("the private PostgreSQL did not start: {why}"),
            }
        }
        panic!("the private PostgreSQL did not start: {failure}");
    }

    fn start_once(
        bindir: &Path,
        owner: Option<(u32, u32)>,
        options: Options,
    ) -> Result<PrivatePostgres, String> {
        let dir = tempfile::Builder::new()
            .prefix("pushgate-pg-")
            .tempdir()
            .expect("temp dir for the private PostgreSQL");
        let data = dir.path().join("data");
        let password_file = dir.path().join("password");
        write_private(&password_file, PASSWORD, owner);
        chown(dir.path(), owner);

        let initdb = Command::new(bindir.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                "--no-sync",
                "--no-locale",
                "-E",
                "UTF8",
                "--no-instructions",
            ])
            .arg(format!("--pwfile={}", password_file.display()))
            .current_dir(dir.path())
            .as_owner(owner)
            .output()
            .expect("running initdb");
        if !initdb.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&initdb.stderr)
            ));
        }

        let method = "scram-sha-256";
        let hba = if options.tls {
            format!("hostssl all all 127.0.0.1/32 {method}\nhostssl all all ::1/128 {method}\n")
        } else {
            format!("host all all 127.0.0.1/32 {method}\nhost all all ::1/128 {method}\n")
        };
        write_private(&data.join("pg_hba.conf"), &hba, owner);
        let port = free_port();
        let mut settings = vec![
            "listen_addresses=127.0.0.1".to_string(),
            "unix_socket_directories=".to_string(),
            // Throw-away data: no need to wait for the disk.
            "fsync=off".to_string(),
            "synchronous_commit=off".to_string(),
            "full_page_writes=off".to_string(),
            "shared_buffers=16MB".to_string(),
            "max_connections=30".to_string(),
        ];
        if options.tls {
            let certificates = certificates();
            std::fs::write(dir.path().join("ca.pem"), &certificates.ca_pem).expect("write CA");
            let cert = dir.path().join("server.pem");
            let key = dir.path().join("server.key");
            write_private(&cert, &certificates.server_pem, owner);
            write_private(&key, &certificates.server_key_pem, owner);
            settings.push("ssl=on".to_string());
            settings.push(format!("ssl_cert_file={}", cert.display()));
            settings.push(format!("ssl_key_file={}", key.display()));
        } else {
            settings.push("ssl=off".to_string());
        }
        let log = dir.path().join("server.log");
        let launch = Launch {
            bindir: bindir.to_path_buf(),
            owner,
            data,
            settings,
        };
        let postmaster = launch.spawn(port, dir.path(), &log);
        let mut server = PrivatePostgres {
            postmaster,
            port,
            dir,
            log,
            launch,
        };
        // On failure `server` is dropped: stopped, its files removed.
        server.wait_until_ready(bindir).map(|()| server)
    }

    /// Polls `pg_isready` until the server accepts connections (bounded: 30 s).
    fn wait_until_ready(&mut self, bindir: &Path) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.postmaster.try_wait() {
                return Err(format!("postgres exited ({status}): {}", self.log_tail()));
            }
            let ready = Command::new(bindir.join("pg_isready"))
                .args([
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-t",
                    "1",
                ])
                .status()
                .map(|status| status.success())
                .unwrap_or(false);
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("not ready within 30 s: {}", self.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server as an outage would (its data kept): connections are cut, nothing answers
    /// on the port until [`PrivatePostgres::start_again`].
    pub fn stop_keeping_data(&mut self) {
        // The server commits without waiting for the disk (a test setting): an immediate
        // shutdown would lose acknowledged commits, which a real outage of a durable server
        // does not.
        self.stop_with(libc::SIGINT);
    }

    /// Starts the stopped server again on the same port and data; returns once it accepts
    /// connections.
    pub fn start_again(&mut self) {
        if let Ok(None) = self.postmaster.try_wait() {
            return;
        }
        self.postmaster = self.launch.spawn(self.port, self.dir.path(), &self.log);
        let bindir = self.launch.bindir.clone();
        if let Err(why) = self.wait_until_ready(&bindir) {
            panic!("the private PostgreSQL did not start again: {why}");
        }
    }

    /// The end of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The CA that issued the server's certificate (TLS servers only).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A PEM file with a CA that issued nothing this server presents.
    pub fn other_ca_file(&self) -> PathBuf {
        let path = self.dir.path().join("other-ca.pem");
        if !path.exists() {
            let other = ca("pushgate test: an unrelated CA");
            std::fs::write(&path, other.pem()).expect("write other CA");
        }
        path
    }

    /// `postgres://postgres:PASSWORD@HOST:PORT/postgres` followed by `query` (`?...` or empty).
    pub fn url(&self, host: &str, query: &str) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@{host}:{}/postgres{query}",
            self.port
        )
    }

    /// SIGQUIT: immediate shutdown, for a server whose data is thrown away; SIGINT: fast
    /// shutdown (connections cut, committed data written out), for one started again.
    fn stop_with(&mut self, signal: libc::c_int) {
        if let Ok(Some(_)) = self.postmaster.try_wait() {
            return;
        }
        let pid = self.postmaster.id() as libc::pid_t;
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(pid, signal);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.postmaster.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.postmaster.kill();
        let _ = self.postmaster.wait();
    }
}

impl Launch {
    /// Starts the postmaster on `port`, its output appended to `log`.
    fn spawn(&self, port: u16, dir: &Path, log: &Path) -> Child {
        let mut command = Command::new(self.bindir.join("postgres"));
        command
            .arg("-D")
            .arg(&self.data)
            .args(["-p", &port.to_string()]);
        for setting in &self.settings {
            command.arg("-c").arg(setting);
        }
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("server log");
        let log_err = log_file.try_clone().expect("server log");
        command
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .as_owner(self.owner);
        // SAFETY: prctl is async-signal-safe and the closure allocates nothing.
        unsafe {
            command.pre_exec(|| {
                // Should this test process die without dropping the fixture (killed), the
                // server shuts down at once instead of lingering on its port.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command.spawn().expect("starting postgres")
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop_with(libc::SIGQUIT);
        // `dir` (a TempDir) is removed after this, with the data and certificates in it.
    }
}

/// Runs a command as the server's owner (`None`: as this process's user).
trait AsOwner {
    fn as_owner(&mut self, owner: Option<(u32, u32)>) -> &mut Self;
}

impl AsOwner for Command {
    fn as_owner(&mut self, owner: Option<(u32, u32)>) -> &mut Self {
        if let Some((uid, gid)) = owner {
            self.uid(uid).gid(gid);
        }
        self
    }
}

/// `PUSHGATE_POSTGRES_BINDIR`, else the newest `/usr/lib/postgresql/<version>/bin` with both
/// `initdb` and `postgres`.
fn find_bindir() -> Option<PathBuf> {
    let usable = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = std::env::var_os(BINDIR).map(PathBuf::from) {
        return usable(&dir).then_some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            usable(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// As root: the `postgres` user's (uid, gid); as anyone else: `None` (run as ourselves).
fn server_owner() -> Result<Option<(u32, u32)>, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let id = |flag: &str| -> Result<u32, String> {
        let output = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .map_err(|e| format!("running `id {flag} postgres`: {e}"))?;
        if !output.status.success() {
            return Err(
                "running as root and there is no `postgres` user to run the private PostgreSQL \
                 as (PostgreSQL refuses root)"
                    .to_string(),
            );
        }
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .map_err(|e| format!("`id {flag} postgres`: {e}"))
    };
    Ok(Some((id("-u")?, id("-g")?)))
}

fn chown(path: &Path, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

/// Writes a file only its owner (the server's user) can read, as PostgreSQL demands of keys.
fn write_private(path: &Path, contents: &str, owner: Option<(u32, u32)>) {
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
    chown(path, owner);
}

fn ca(name: &str) -> rcgen::CertifiedIssuer<'static, KeyPair> {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    rcgen::CertifiedIssuer::self_signed(params, key).expect("self-signed CA")
}

/// A CA and a server certificate for `localhost`, 127.0.0.1 and [`CERT_DNS_NAME`].
fn certificates() -> Certificates {
    let ca = ca("pushgate test: private PostgreSQL CA");
    let key = KeyPair::generate().expect("server key");
    let params = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        CERT_DNS_NAME.to_string(),
    ])
    .expect("server certificate parameters");
    let cert = params.signed_by(&key, &ca).expect("server certificate");
    Certificates {
        ca_pem: ca.pem(),
        server_pem: cert.pem(),
        server_key_pem: key.serialize_pem(),
    }
}
