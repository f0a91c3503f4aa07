//! A minimal HTTP/1.1 client, as strict as the clients people use: it reuses
//! a connection whenever the response allows it (HTTP/1.1 without
//! `Connection: close`, or HTTP/1.0 with `keep-alive`), whatever it asked
//! for, so a server that closes without saying so fails, as it would under
//! wrk. A connection is looked at before reuse, as curl and browsers look at
//! theirs, and what that finds is judged in `load.rs`. Timeouts, so nothing
//! hangs. Shared by the benchmark's load generator and the integration tests.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, recv};

pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
    /// The server said `Connection: close`.
    pub close: bool,
    /// A client may send its next request on this connection: HTTP/1.1
    /// without `Connection: close`, or HTTP/1.0 with `keep-alive`, and a
    /// body whose end was marked (a length or chunks, not the close).
    pub reusable: bool,
    /// How long the server said it keeps an idle connection open
    /// (`Keep-Alive: timeout=N`, in seconds), if it said.
    pub idle_timeout: Option<Duration>,
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

impl Conn<TcpStream> {
    /// The server closed (or reset) this connection since its last response:
    /// the check a client pool makes before it reuses a connection (curl's
    /// dead-connection check, hyper's, a browser's). A peek that does not
    /// wait, so the socket stays blocking.
    pub fn closed_by_server(&self) -> bool {
        if !self.reader.buffer().is_empty() {
            return false;
        }
        let mut byte = [0u8; 1];
        let fd = self.reader.get_ref().as_raw_fd();
        match recv(fd, &mut byte, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) {
            Ok(0) => true,
            Ok(_) | Err(Errno::EAGAIN) | Err(Errno::EINTR) => false,
            Err(_) => true,
        }
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
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut words = line.split_whitespace();
    let version = words.next().unwrap_or_default().to_string();
    let status = words
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
    let mut length = None;
    let mut chunked = false;
    let mut connection = String::new();
    let mut idle_timeout = None;
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
        let Some((name, value)) = header.split_once(':') else {
            return Err(bad(format!("bad header line {header:?}")));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse()
                    .map_err(|_| bad(format!("bad length {value:?}")))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            connection = value.to_ascii_lowercase();
        } else if name.eq_ignore_ascii_case("keep-alive") {
            idle_timeout = stated_timeout(value);
        }
    }
    let has = |token: &str| connection.split(',').any(|t| t.trim() == token);
    let close = has("close");
    let mut delimited = true;
    let body = if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else if chunked {
        read_chunks(reader)?
    } else if let Some(length) = length {
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        body
    } else {
        // No length: the body ends when the server closes.
        delimited = false;
        let mut body = Vec::new();
        reader.read_to_end(&mut body)?;
        body
    };
    let keep_alive = if version == "HTTP/1.0" {
        has("keep-alive")
    } else {
        !close
    };
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        close,
        reusable: keep_alive && delimited,
        idle_timeout,
    })
}

/// `timeout=N` of a `Keep-Alive` header (`timeout=5, max=1000`).
fn stated_timeout(value: &str) -> Option<Duration> {
    value.split(',').find_map(|param| {
        let (name, seconds) = param.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("timeout") {
            return None;
        }
        seconds.trim().parse().ok().map(Duration::from_secs)
    })
}

/// A chunked body (RFC 9112 7.1), trailers skipped.
fn read_chunks<R: BufRead>(reader: &mut R) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad chunk size {line:?}"),
            )
        })?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                line.clear();
                if reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size + 2, 0);
        reader.read_exact(&mut body[start..])?;
        body.truncate(start + size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::mpsc;

    #[test]
    fn the_stated_idle_timeout_is_read_from_keep_alive() {
        assert_eq!(stated_timeout("timeout=5"), Some(Duration::from_secs(5)));
        assert_eq!(
            stated_timeout("max=100, Timeout = 1"),
            Some(Duration::from_secs(1))
        );
        assert_eq!(stated_timeout("max=100"), None);
        assert_eq!(stated_timeout("timeout=soon"), None);
    }

    /// The peek sees a connection the server keeps as open, and leaves it
    /// usable (a closed one: `load::tests`).
    #[test]
    fn a_connection_the_server_keeps_is_not_taken_for_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (answered, rx) = mpsc::channel();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
            let mut request = [0u8; 512];
            let _ = stream.read(&mut request).expect("request");
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .expect("response");
            answered.send(()).expect("answered");
            // Held open until the client closes its end.
            let _ = stream.read(&mut request);
        });
        let mut conn = Conn::new(connect(addr).expect("connect")).expect("conn");
        conn.request("/", false).expect("response");
        rx.recv_timeout(IO_TIMEOUT).expect("the server answered");
        assert!(!conn.closed_by_server());
        drop(conn);
        server.join().expect("server");
    }
}
