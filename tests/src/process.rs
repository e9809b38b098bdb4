//! Child processes the tests and the bench start: any server command, its
//! addresses read from its startup lines (`Admin API on http://ADDR/`, then
//! `Serving HTTP on http://ADDR/`), its output drained by threads so it
//! never blocks on a full pipe, what /proc says of it (memory, CPU time),
//! and its end: a signal, a bounded wait, and a kill when it is dropped.
//! `Host` is the host binary's `serve` among them.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::paths::host_bin;
use crate::tempdir::TempDir;

/// How long a server may take to compile its components and bind.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);

/// How long `Process::stop` waits after SIGTERM before it kills.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// The `serve` arguments that put both of the host's listeners on free
/// loopback ports (the startup lines say which).
pub const FREE_PORTS: [&str; 4] = ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];

/// How much of a child's stderr to keep.
#[derive(Clone, Copy, Debug)]
pub enum KeepStderr {
    /// All of it (the tests read a host's log).
    All,
    /// Only the last this many bytes (for a report when it fails).
    Last(usize),
}

/// A child process, killed when dropped. Its stdin is closed and its
/// stderr collected by a thread.
pub struct Process {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Process {
    /// Start `cmd` (its stdout as `cmd` has it) and collect its stderr.
    pub fn spawn(mut cmd: Command, keep: KeepStderr) -> Result<Process> {
        cmd.stdin(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("failed to start {}", program(&cmd)))?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr is piped");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                let mut log = sink.lock().unwrap();
                log.push_str(&String::from_utf8_lossy(&buf[..n]));
                if let KeepStderr::Last(max) = keep {
                    keep_last(&mut log, max);
                }
            }
        });
        Ok(Process { child, stderr })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// What the process has written to stderr so far (what is kept of it).
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The log once every one of `needles` appears in it (stderr is
    /// collected by another thread, so a line can trail the event behind
    /// it); panics after 20 s naming what is missing.
    pub fn log_with(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.stderr();
            if needles.iter().all(|n| log.contains(n)) {
                return log;
            }
            if Instant::now() > deadline {
                let missing: Vec<_> = needles.iter().filter(|n| !log.contains(*n)).collect();
                panic!("log never showed {missing:?}; it has:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Is the process still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Wait for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Stop the process as an operator would: SIGTERM, then SIGKILL if it
    /// has not exited within 20 s.
    pub fn stop(&mut self) {
        if self.alive() {
            self.signal(libc::SIGTERM);
            if self.wait_exit(STOP_TIMEOUT).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }

    /// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`).
    pub fn proc_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} missing from /proc status"))
    }

    /// The user + system CPU time the process has used so far, in seconds
    /// (/proc/PID/stat).
    pub fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("read /proc stat");
        // The fields after the command name, which is in parentheses and
        // may hold anything: state is the first, utime the 12th.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .expect("/proc stat has a command name")
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 =
            fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        // SAFETY: sysconf has no preconditions.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        ticks as f64 / per_second as f64
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Drop the front of `log` so that at most about `max` bytes remain.
fn keep_last(log: &mut String, max: usize) {
    if log.len() > max {
        let mut cut = log.len() - max;
        while !log.is_char_boundary(cut) {
            cut += 1;
        }
        log.drain(..cut);
    }
}

fn program(cmd: &Command) -> String {
    Path::new(cmd.get_program())
        .file_name()
        .unwrap_or(cmd.get_program())
        .to_string_lossy()
        .into_owned()
}

/// A startup line a server prints on stdout.
#[derive(Debug, PartialEq)]
enum Startup<'a> {
    /// `Admin API on http://ADDR/`
    Admin(&'a str),
    /// `Serving HTTP on http://ADDR/` (or https)
    Serving(&'a str),
}

fn startup_line(line: &str) -> Option<Startup<'_>> {
    if let Some(rest) = line.strip_prefix("Admin API on http://") {
        return Some(Startup::Admin(rest.trim_end_matches('/')));
    }
    line.strip_prefix("Serving HTTP on http://")
        .or_else(|| line.strip_prefix("Serving HTTP on https://"))
        .map(|rest| Startup::Serving(rest.trim_end_matches('/')))
}

/// A running server and the addresses its startup lines gave.
pub struct Server {
    pub process: Process,
    pub addr: SocketAddr,
    /// From an `Admin API on` line before the serving line, if any.
    pub admin: Option<SocketAddr>,
}

/// Start a server command (its stdout is taken over and drained) and wait
/// at most `STARTUP_TIMEOUT` for its `Serving HTTP on` line.
pub fn start_server(mut cmd: Command, keep: KeepStderr) -> Result<Server> {
    cmd.stdout(Stdio::piped());
    let name = program(&cmd);
    let mut process = Process::spawn(cmd, keep)?;
    let stdout = process.child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel::<(String, Option<String>)>();
    std::thread::spawn(move || {
        let mut admin = None;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            match startup_line(&line) {
                Some(Startup::Admin(addr)) => admin = Some(addr.to_string()),
                Some(Startup::Serving(addr)) => {
                    let _ = tx.send((addr.to_string(), admin.clone()));
                }
                None => {}
            }
        }
    });
    let Ok((addr, admin)) = rx.recv_timeout(STARTUP_TIMEOUT) else {
        let _ = process.child.kill();
        let _ = process.child.wait();
        bail!(
            "{name} did not print its startup line; stderr:\n{}",
            process.stderr()
        );
    };
    let admin = match admin {
        Some(admin) => Some(admin.parse().context("the admin line carries an address")?),
        None => None,
    };
    Ok(Server {
        process,
        addr: addr
            .parse()
            .context("the startup line carries an address")?,
        admin,
    })
}

/// `BIN serve --state-dir STATE` on free ports with `args`, with no admin
/// token from the environment.
pub fn serve_command(bin: &Path, state: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("serve").arg("--state-dir").arg(state);
    cmd.args(FREE_PORTS)
        .args(args)
        .env_remove("HOST_ADMIN_TOKEN");
    cmd
}

/// A running host process (its `Process` methods through `Deref`), killed
/// when dropped.
pub struct Host {
    process: Process,
    /// The binary it runs (client subcommands run it too).
    pub(crate) bin: PathBuf,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The state directory, when the host owns a temporary one.
    _state: Option<TempDir>,
}

impl Host {
    /// `host serve COMPONENT ARGS…` on free ports with a fresh state
    /// directory, waiting for the startup line.
    pub fn start(component: &Path, args: &[&str]) -> Host {
        let state = TempDir::new("state");
        let path = component.to_str().expect("utf-8 path");
        let mut host = Host::start_in(&state.0, &[&[path], args].concat(), &[]);
        host._state = Some(state);
        host
    }

    /// A host serving no default app (only what tests deploy), with a fresh
    /// state directory.
    pub fn bare(args: &[&str]) -> Host {
        let state = TempDir::new("bare");
        let mut host = Host::start_in(&state.0, &[&["--no-default-app"], args].concat(), &[]);
        host._state = Some(state);
        host
    }

    /// `host serve ARGS…` on free ports with `state` as its state directory
    /// (kept after the host stops, for restarts) and extra environment.
    pub fn start_in(state: &Path, args: &[&str], env: &[(&str, &str)]) -> Host {
        let mut cmd = serve_command(&host_bin(), state, args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Host::spawn(cmd)
    }

    /// Start from a prepared command (its stdout/stderr are taken over) and
    /// wait for the startup lines; panics if it does not start.
    pub fn spawn(cmd: Command) -> Host {
        Host::try_spawn(cmd, KeepStderr::All).unwrap_or_else(|err| panic!("{err:#}"))
    }

    /// Start from a prepared command and wait for the startup lines.
    pub fn try_spawn(cmd: Command, keep: KeepStderr) -> Result<Host> {
        let bin = PathBuf::from(cmd.get_program());
        let server = start_server(cmd, keep)?;
        let Some(admin) = server.admin else {
            bail!("the admin line precedes the serving line");
        };
        Ok(Host {
            process: server.process,
            bin,
            addr: server.addr,
            admin,
            _state: None,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }
}

impl Deref for Host {
    type Target = Process;

    fn deref(&self) -> &Process {
        &self.process
    }
}

impl DerefMut for Host {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_lines_give_the_addresses() {
        assert_eq!(
            startup_line("Admin API on http://127.0.0.1:4001/"),
            Some(Startup::Admin("127.0.0.1:4001"))
        );
        assert_eq!(
            startup_line("Serving HTTP on http://127.0.0.1:4000/"),
            Some(Startup::Serving("127.0.0.1:4000"))
        );
        assert_eq!(
            startup_line("Serving HTTP on https://[::1]:443/"),
            Some(Startup::Serving("[::1]:443"))
        );
        assert_eq!(startup_line("compiling 3 components"), None);
    }

    #[test]
    fn a_bounded_log_keeps_its_end_on_a_char_boundary() {
        let mut log = "ab€cd".to_string();
        keep_last(&mut log, 4);
        assert_eq!(log, "cd", "the cut falls inside `€` and moves past it");
        let mut log = "abc".to_string();
        keep_last(&mut log, 8);
        assert_eq!(log, "abc");
    }
}
