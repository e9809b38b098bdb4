//! Guest stdout and stderr: captured line by line and logged with the app
//! and the request id. Each request has a budget (lines and bytes, shared by
//! both streams); past it the rest is dropped and one line says so, so a
//! chatty guest cannot flood the log or the disk.

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

struct Budget {
    lines: usize,
    bytes: usize,
    truncated: bool,
}

/// One request's guest output: make its `stdout` and `stderr` streams.
pub struct GuestOutput {
    app: Arc<str>,
    request_id: Arc<str>,
    budget: Arc<Mutex<Budget>>,
}

impl GuestOutput {
    pub fn new(app: Arc<str>, request_id: Arc<str>) -> GuestOutput {
        GuestOutput {
            app,
            request_id,
            budget: Arc::new(Mutex::new(Budget {
                lines: MAX_LINES_PER_REQUEST,
                bytes: MAX_BYTES_PER_REQUEST,
                truncated: false,
            })),
        }
    }

    pub fn stream(&self, name: &'static str) -> GuestStream {
        GuestStream {
            sink: Arc::new(Mutex::new(LineSink {
                app: self.app.clone(),
                request_id: self.request_id.clone(),
                stream: name,
                partial: Vec::new(),
                budget: self.budget.clone(),
            })),
        }
    }
}

struct LineSink {
    app: Arc<str>,
    request_id: Arc<str>,
    stream: &'static str,
    partial: Vec<u8>,
    budget: Arc<Mutex<Budget>>,
}

impl LineSink {
    fn emit(&mut self, line: &[u8]) {
        let Ok(mut budget) = self.budget.lock() else {
            return;
        };
        if budget.lines == 0 || budget.bytes < line.len() {
            if !budget.truncated {
                budget.truncated = true;
                tracing::warn!(target: "guest", app = %self.app, request_id = %self.request_id,
                    "guest output over its budget of {MAX_LINES_PER_REQUEST} lines / {MAX_BYTES_PER_REQUEST} bytes per request; the rest is dropped");
            }
            return;
        }
        budget.lines -= 1;
        budget.bytes -= line.len();
        drop(budget);
        let text = String::from_utf8_lossy(line);
        tracing::info!(target: "guest", app = %self.app, request_id = %self.request_id, stream = self.stream, "{}", text.trim_end_matches('\r'));
    }

    fn write(&mut self, mut data: &[u8]) {
        while let Some(end) = data.iter().position(|&b| b == b'\n') {
            let mut line = std::mem::take(&mut self.partial);
            line.extend_from_slice(&data[..end]);
            self.emit(&line);
            data = &data[end + 1..];
        }
        self.partial.extend_from_slice(data);
        while self.partial.len() >= MAX_LINE {
            let rest = self.partial.split_off(MAX_LINE);
            let line = std::mem::replace(&mut self.partial, rest);
            self.emit(&line);
        }
    }
}

impl Drop for LineSink {
    fn drop(&mut self) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.emit(&line);
        }
    }
}

/// A guest's stdout or stderr.
#[derive(Clone)]
pub struct GuestStream {
    sink: Arc<Mutex<LineSink>>,
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
        if let Ok(mut sink) = self.sink.lock() {
            sink.write(buf);
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
