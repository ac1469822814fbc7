//! A TCP proxy on 127.0.0.1 that a test puts between Klio and a server (the S3 server) to
//! make that server fail on demand: [`FaultProxy::set_unavailable`] cuts every open
//! connection and answers each new request with `503 Service Unavailable` (S3's
//! `SlowDown`), and [`FaultProxy::set_delay`] slows the client-to-server direction down.
//! Writes nothing to disk; its threads end when it is dropped.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};

#[derive(Default)]
struct Shared {
    unavailable: AtomicBool,
    /// Pause after each forwarded client-to-server chunk, in microseconds.
    delay_micros: AtomicU64,
    refused: AtomicU64,
    stop: AtomicBool,
    /// Both ends of every forwarded connection, to cut them.
    open: Mutex<Vec<TcpStream>>,
}

/// See the module documentation.
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
    accept: Option<thread::JoinHandle<()>>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("port", &self.port)
            .finish()
    }
}

const SLOW_DOWN: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>fault proxy: service unavailable</Message></Error>";

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream_port` there.
    pub fn start(upstream_port: u16) -> Result<FaultProxy> {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("fault proxy: binding")?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || accept_loop(listener, upstream_port, s))?;
        Ok(FaultProxy {
            port,
            shared,
            accept: Some(accept),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// On: open connections are cut and every request answers 503 until turned off.
    pub fn set_unavailable(&self, on: bool) {
        self.shared.unavailable.store(on, Ordering::SeqCst);
        if on {
            self.cut_all();
        }
    }

    /// Pauses `delay` after each chunk (at most 16 KiB) sent towards the server.
    pub fn set_delay(&self, delay: Duration) {
        let micros = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.shared.delay_micros.store(micros, Ordering::SeqCst);
    }

    /// Requests answered 503 so far.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }

    fn cut_all(&self) {
        let open = std::mem::take(&mut *self.shared.open.lock().unwrap_or_else(|p| p.into_inner()));
        for s in open {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.cut_all();
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, upstream_port: u16, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let _ = client.set_nonblocking(false);
                let s = Arc::clone(&shared);
                thread::spawn(move || {
                    if s.unavailable.load(Ordering::SeqCst) {
                        refuse(client, &s);
                    } else {
                        forward(client, upstream_port, &s);
                    }
                });
            }
            // Nothing to accept: look again shortly (and notice `stop`).
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Reads the request's head and answers 503; the connection is then closed.
fn refuse(mut client: TcpStream, shared: &Shared) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 << 10 {
        match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    shared.refused.fetch_add(1, Ordering::SeqCst);
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{SLOW_DOWN}",
        SLOW_DOWN.len()
    );
    let _ = client.write_all(answer.as_bytes());
    let _ = client.shutdown(Shutdown::Both);
}

fn forward(client: TcpStream, upstream_port: u16, shared: &Arc<Shared>) {
    let Ok(server) = TcpStream::connect((Ipv4Addr::LOCALHOST, upstream_port)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    {
        let mut open = shared.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|s| s.peer_addr().is_ok());
        for s in [&client, &server] {
            if let Ok(s) = s.try_clone() {
                open.push(s);
            }
        }
    }
    let s = Arc::clone(shared);
    let up = thread::spawn(move || pump(c2, server, Some(&s)));
    pump(s2, client, None);
    let _ = up.join();
}

/// Copies `from` to `to` until either ends; `delay` from `shared` applies when given.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: Option<&Shared>) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        if let Some(d) = shared.map(|s| s.delay_micros.load(Ordering::SeqCst)) {
            if d > 0 {
                thread::sleep(Duration::from_micros(d));
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}
