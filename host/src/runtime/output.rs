//! Guest stdout and stderr: captured line by line and logged with the app
//! and the request id. Each request has a budget (lines and bytes, shared by
//! both streams); past it the rest is dropped and one line says so, so a
//! chatty guest cannot flood the log or the disk.
//!
//! An instance that serves several requests (instance reuse) keeps its
//! streams: [`GuestOutput::begin`] flushes what the last request left
//! unterminated, then switches the request id and refills the budget.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Lines a request may log from its guest, across stdout and stderr.
pub const MAX_LINES_PER_REQUEST: usize = 100;
/// Bytes a request may log from its guest, across stdout and stderr.
pub const MAX_BYTES_PER_REQUEST: usize = 16 * 1024;
/// A line longer than this is logged in pieces.
const MAX_LINE: usize = 2048;

const STREAMS: [&str; 2] = ["stdout", "stderr"];

/// One instance's guest output: hands out its `stdout` and `stderr` streams.
#[derive(Clone)]
pub struct GuestOutput {
    shared: Arc<Mutex<Shared>>,
}

struct Shared {
    app: Arc<str>,
    request_id: Arc<str>,
    lines: usize,
    bytes: usize,
    truncated: bool,
    /// The unterminated tail of each stream.
    partial: [Vec<u8>; 2],
}

impl GuestOutput {
    pub fn new(app: Arc<str>, request_id: Arc<str>) -> GuestOutput {
        GuestOutput {
            shared: Arc::new(Mutex::new(Shared {
                app,
                request_id,
                lines: MAX_LINES_PER_REQUEST,
                bytes: MAX_BYTES_PER_REQUEST,
                truncated: false,
                partial: [Vec::new(), Vec::new()],
            })),
        }
    }

    /// Start the next request on the same instance.
    pub fn begin(&self, request_id: Arc<str>) {
        if let Ok(mut shared) = self.shared.lock() {
            shared.flush();
            shared.request_id = request_id;
            shared.lines = MAX_LINES_PER_REQUEST;
            shared.bytes = MAX_BYTES_PER_REQUEST;
            shared.truncated = false;
        }
    }

    pub fn stdout(&self) -> GuestStream {
        GuestStream {
            shared: self.shared.clone(),
            index: 0,
        }
    }

    pub fn stderr(&self) -> GuestStream {
        GuestStream {
            shared: self.shared.clone(),
            index: 1,
        }
    }
}

impl Shared {
    fn emit(&mut self, index: usize, line: &[u8]) {
        if self.lines == 0 || self.bytes < line.len() {
            if !self.truncated {
                self.truncated = true;
                tracing::warn!(target: "guest", app = %self.app, request_id = %self.request_id,
                    "guest output over its budget of {MAX_LINES_PER_REQUEST} lines / {MAX_BYTES_PER_REQUEST} bytes per request; the rest is dropped");
            }
            return;
        }
        self.lines -= 1;
        self.bytes -= line.len();
        let text = String::from_utf8_lossy(line);
        tracing::info!(target: "guest", app = %self.app, request_id = %self.request_id,
            stream = STREAMS[index], "{}", text.trim_end_matches('\r'));
    }

    fn write(&mut self, index: usize, mut data: &[u8]) {
        while let Some(end) = data.iter().position(|&b| b == b'\n') {
            let mut line = std::mem::take(&mut self.partial[index]);
            line.extend_from_slice(&data[..end]);
            self.emit(index, &line);
            data = &data[end + 1..];
        }
        self.partial[index].extend_from_slice(data);
        while self.partial[index].len() >= MAX_LINE {
            let rest = self.partial[index].split_off(MAX_LINE);
            let line = std::mem::replace(&mut self.partial[index], rest);
            self.emit(index, &line);
        }
    }

    /// Log what is left unterminated on either stream.
    fn flush(&mut self) {
        for index in 0..STREAMS.len() {
            if !self.partial[index].is_empty() {
                let line = std::mem::take(&mut self.partial[index]);
                self.emit(index, &line);
            }
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.flush();
    }
}

/// A guest's stdout or stderr.
#[derive(Clone)]
pub struct GuestStream {
    shared: Arc<Mutex<Shared>>,
    index: usize,
}

impl IsTerminal for GuestStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStream {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for GuestStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Ok(mut shared) = self.shared.lock() {
            shared.write(self.index, buf);
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_flushes_refills_the_budget_and_switches_the_request() {
        let output = GuestOutput::new("app".into(), "r1".into());
        let (stdout, stderr) = (output.stdout(), output.stderr());
        for _ in 0..MAX_LINES_PER_REQUEST + 5 {
            stdout.shared.lock().unwrap().write(stdout.index, b"line\n");
        }
        stderr
            .shared
            .lock()
            .unwrap()
            .write(stderr.index, b"unterminated");
        {
            let shared = output.shared.lock().unwrap();
            assert_eq!(shared.lines, 0);
            assert!(shared.truncated);
            assert_eq!(shared.partial[1], b"unterminated");
        }
        output.begin("r2".into());
        let shared = output.shared.lock().unwrap();
        assert_eq!(&*shared.request_id, "r2");
        assert_eq!(shared.lines, MAX_LINES_PER_REQUEST);
        assert_eq!(shared.bytes, MAX_BYTES_PER_REQUEST);
        assert!(!shared.truncated);
        assert!(shared.partial.iter().all(Vec::is_empty));
    }
}
