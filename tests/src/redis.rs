//! A real `redis-server` for the tests and the bench (`make tools`
//! installs it from Debian when it is missing): started on a free loopback
//! port with no persistence, ready once it answers `PING`, stopped when
//! dropped. It can be stopped and started again on the same port, as an
//! outage would look to its clients.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{KeepStderr, Process};

/// How long a redis-server may take to answer its first `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running redis-server.
pub struct RedisServer {
    process: Option<Process>,
    pub port: u16,
    password: Option<String>,
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl RedisServer {
    /// A new redis-server on a free port.
    pub fn start() -> RedisServer {
        RedisServer::start_free(None)
    }

    /// A new redis-server on a free port that requires `password`.
    pub fn start_with_password(password: &str) -> RedisServer {
        RedisServer::start_free(Some(password))
    }

    /// On a port free a moment ago: another test may take it first, so a
    /// server that exits (it could not bind) is started again elsewhere.
    fn start_free(password: Option<&str>) -> RedisServer {
        for _ in 0..10 {
            let mut server = RedisServer {
                process: None,
                port: free_port(),
                password: password.map(str::to_string),
            };
            if server.try_start() {
                return server;
            }
        }
        panic!("redis-server did not start on any of 10 free ports");
    }

    /// `redis://[:PASSWORD@]127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        let auth = self
            .password
            .as_ref()
            .map(|p| format!(":{p}@"))
            .unwrap_or_default();
        format!("redis://{auth}127.0.0.1:{}/0", self.port)
    }

    /// Kill it (SIGKILL: no goodbye to its clients). Its data is gone.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take()
            && process.alive()
        {
            process.signal(libc::SIGKILL);
            process.wait_exit(Duration::from_secs(10));
        }
    }

    /// Start it (again) on its port, empty, and wait until it answers.
    pub fn restart(&mut self) {
        assert!(
            self.try_start(),
            "redis-server could not start again on port {}",
            self.port
        );
    }

    /// Start it on its port and wait until it answers; `false` if it
    /// exited (the port was taken).
    fn try_start(&mut self) -> bool {
        self.kill();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null());
        if let Some(password) = &self.password {
            cmd.args(["--requirepass", password]);
        }
        let process = Process::spawn(cmd, KeepStderr::Last(4096))
            .unwrap_or_else(|e| panic!("{e:#}: `make tools` installs redis-server"));
        self.process = Some(process);
        let started = Instant::now();
        loop {
            if !self.process.as_mut().is_some_and(Process::alive) {
                self.process = None;
                return false;
            }
            // Ours answers, not another test's on the same port: it is
            // still running a moment later.
            if self.answers() {
                std::thread::sleep(Duration::from_millis(50));
                if self.process.as_mut().is_some_and(Process::alive) {
                    return true;
                }
            }
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "redis-server on port {} did not answer within {READY_TIMEOUT:?}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Does it answer `PING` (or ask for the password)?
    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 16];
        stream.write_all(b"PING\r\n").is_ok()
            && matches!(stream.read(&mut reply), Ok(n) if n > 0)
            && (reply.starts_with(b"+PONG") || reply.starts_with(b"-NOAUTH"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
