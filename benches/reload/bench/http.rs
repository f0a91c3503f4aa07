//! A minimal HTTP/1.1 client: one request per connection, or keep-alive,
//! with timeouts so nothing hangs. Shared by the benchmark's load generator
//! and the integration tests.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
    /// The server said `Connection: close`.
    pub close: bool,
}

impl Response {
    /// The worker pid in a `hello from worker N (pid P)` body.
    pub fn pid(&self) -> Option<i32> {
        let start = self.body.find("(pid ")? + 5;
        let end = self.body[start..].find(')')? + start;
        self.body[start..end].parse().ok()
    }
}

/// `GET path` on a fresh connection with `Connection: close`.
pub fn get(addr: SocketAddr, path: &str) -> io::Result<Response> {
    Conn::new(connect(addr)?)?.request(path, true)
}

pub fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One client connection, reusable while the server keeps it alive.
pub struct Conn<S: Read + Write> {
    reader: BufReader<S>,
}

impl<S: Read + Write> Conn<S> {
    pub fn new(stream: S) -> io::Result<Conn<S>> {
        Ok(Conn {
            reader: BufReader::new(stream),
        })
    }

    pub fn request(&mut self, path: &str, close: bool) -> io::Result<Response> {
        let connection = if close { "close" } else { "keep-alive" };
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: {connection}\r\n\r\n");
        self.reader.get_mut().write_all(request.as_bytes())?;
        read_response(&mut self.reader)
    }
}

fn read_response<R: BufRead>(reader: &mut R) -> io::Result<Response> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {line:?}"),
            )
        })?;
    let mut length = 0usize;
    let mut close = false;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed in headers",
            ));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        close,
    })
}
