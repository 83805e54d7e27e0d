//! `nettool`: what the busybox test image lacks to test and measure
//! networking between containers. Debian's busybox has no UDP client or
//! server, and Debian's iperf3 and HTTP servers are not static, so the
//! image carries this one static binary instead.
//!
//! Addresses are IP addresses, never names: a statically linked glibc
//! cannot resolve names without the shared NSS modules, which the image
//! does not have (the tests resolve with busybox's nslookup first).
//!
//! * `udp-serve PORT REPLY`: answers every datagram with REPLY and a newline.
//! * `udp-ask IP PORT MESSAGE`: sends MESSAGE, prints the answer (exit 1
//!   if none comes within 3 s, after three tries).
//! * `tcp-sink PORT`: accepts connections and discards what they send.
//! * `tcp-send IP PORT SECONDS`: sends as fast as it can for SECONDS and
//!   prints the throughput in Mbit/s.
//! * `http-serve PORT`: answers every HTTP request with a small page
//!   (keep-alive).
//! * `http-latency IP PORT COUNT`: COUNT requests, one at a time, each on a
//!   new connection; prints the median and the 90th percentile in
//!   microseconds.
//! * `dns-txt IP NAME`: asks IP:53 over UDP for NAME's TXT records,
//!   offering EDNS answers of up to 4096 bytes, and prints the answer's
//!   size, its truncation bit and its record count (busybox's nslookup
//!   offers no EDNS, so it never gets an answer large enough to be
//!   fragmented).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "nettool",
    about = "UDP echo, TCP throughput and HTTP latency between containers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer every UDP datagram on PORT with REPLY and a newline.
    UdpServe { port: u16, reply: String },
    /// Send MESSAGE to IP:PORT over UDP and print the answer.
    UdpAsk {
        ip: IpAddr,
        port: u16,
        message: String,
    },
    /// Accept TCP connections on PORT and discard what they send.
    TcpSink { port: u16 },
    /// Send to IP:PORT over TCP for SECONDS; print the throughput.
    TcpSend { ip: IpAddr, port: u16, seconds: u64 },
    /// Serve a small page over HTTP/1.1 on PORT.
    HttpServe { port: u16 },
    /// COUNT HTTP requests to IP:PORT, one at a time; print median and p90.
    HttpLatency { ip: IpAddr, port: u16, count: usize },
    /// Ask IP:53 for NAME's TXT records with EDNS (4096 bytes).
    DnsTxt { ip: IpAddr, name: String },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::UdpServe { port, reply } => udp_serve(port, &reply),
        Command::UdpAsk { ip, port, message } => udp_ask((ip, port).into(), &message),
        Command::TcpSink { port } => tcp_sink(port),
        Command::TcpSend { ip, port, seconds } => {
            tcp_send((ip, port).into(), Duration::from_secs(seconds))
        }
        Command::HttpServe { port } => http_serve(port),
        Command::HttpLatency { ip, port, count } => http_latency((ip, port).into(), count),
        Command::DnsTxt { ip, name } => dns_txt((ip, 53).into(), &name),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nettool: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T = ()> = std::result::Result<T, String>;

fn ctx<T, E: std::fmt::Display>(r: std::result::Result<T, E>, what: &str) -> Result<T> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// Listens on both families where the kernel allows (`[::]` takes IPv4
/// too unless the container disabled IPv6, then `0.0.0.0`).
fn any(port: u16) -> Vec<SocketAddr> {
    vec![
        (IpAddr::from([0u16; 8]), port).into(),
        (IpAddr::from([0u8; 4]), port).into(),
    ]
}

fn udp_serve(port: u16, reply: &str) -> Result {
    let s = ctx(UdpSocket::bind(&any(port)[..]), "bind")?;
    println!("udp-serve: listening on {port}");
    let mut buf = [0u8; 65536];
    let answer = format!("{reply}\n");
    loop {
        let (_, from) = ctx(s.recv_from(&mut buf), "receive")?;
        ctx(s.send_to(answer.as_bytes(), from), "answer")?;
    }
}

fn udp_ask(to: SocketAddr, message: &str) -> Result {
    let local: SocketAddr = match to {
        SocketAddr::V4(_) => (IpAddr::from([0u8; 4]), 0).into(),
        SocketAddr::V6(_) => (IpAddr::from([0u16; 8]), 0).into(),
    };
    let s = ctx(UdpSocket::bind(local), "bind")?;
    ctx(s.connect(to), "connect")?;
    ctx(s.set_read_timeout(Some(Duration::from_secs(1))), "timeout")?;
    let mut buf = [0u8; 65536];
    for _ in 0..3 {
        ctx(s.send(message.as_bytes()), "send")?;
        if let Ok(n) = s.recv(&mut buf) {
            print!("{}", String::from_utf8_lossy(&buf[..n]));
            return Ok(());
        }
    }
    Err(format!("no answer from {to}"))
}

fn tcp_sink(port: u16) -> Result {
    let l = ctx(TcpListener::bind(&any(port)[..]), "bind")?;
    println!("tcp-sink: listening on {port}");
    for conn in l.incoming() {
        let Ok(mut c) = conn else { continue };
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
        });
    }
    Ok(())
}

fn tcp_send(to: SocketAddr, length: Duration) -> Result {
    let mut c = ctx(
        TcpStream::connect_timeout(&to, Duration::from_secs(10)),
        "connect",
    )?;
    let buf = vec![0x5au8; 256 * 1024];
    let start = Instant::now();
    let mut sent: u64 = 0;
    while start.elapsed() < length {
        let n = ctx(c.write(&buf), "send")?;
        sent += n as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{:.1} Mbit/s", sent as f64 * 8.0 / secs / 1e6);
    Ok(())
}

const PAGE: &str = "hello from nettool\n";

fn http_serve(port: u16) -> Result {
    let l = ctx(TcpListener::bind(&any(port)[..]), "bind")?;
    println!("http-serve: listening on {port}");
    for conn in l.incoming() {
        let Ok(c) = conn else { continue };
        std::thread::spawn(move || {
            let _ = serve_http(c);
        });
    }
    Ok(())
}

fn serve_http(c: TcpStream) -> std::io::Result<()> {
    c.set_nodelay(true)?;
    let mut out = c.try_clone()?;
    let mut rd = BufReader::new(c);
    loop {
        // The request line and headers, up to the empty line.
        let mut line = String::new();
        if rd.read_line(&mut line)? == 0 {
            return Ok(());
        }
        while line.trim_end() != "" {
            line.clear();
            if rd.read_line(&mut line)? == 0 {
                return Ok(());
            }
        }
        write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{PAGE}",
            PAGE.len()
        )?;
    }
}

fn http_latency(to: SocketAddr, count: usize) -> Result {
    if count == 0 {
        return Err("COUNT must be at least 1".into());
    }
    let mut times = Vec::with_capacity(count);
    let request = format!("GET / HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n");
    for _ in 0..count {
        let start = Instant::now();
        let mut c = ctx(
            TcpStream::connect_timeout(&to, Duration::from_secs(10)),
            "connect",
        )?;
        ctx(c.set_nodelay(true), "nodelay")?;
        ctx(c.write_all(request.as_bytes()), "request")?;
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        // Read until the whole page has arrived (the server keeps the
        // connection open).
        while !answer.ends_with(PAGE.as_bytes()) {
            let n = ctx(c.read(&mut buf), "answer")?;
            if n == 0 {
                return Err("the server closed the connection early".into());
            }
            answer.extend_from_slice(&buf[..n]);
        }
        times.push(start.elapsed());
    }
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize].as_micros();
    println!(
        "median {} us, p90 {} us, {count} requests",
        at(0.5),
        at(0.9)
    );
    Ok(())
}

fn dns_txt(to: SocketAddr, name: &str) -> Result {
    // Header: id, flags (recursion desired), 1 question, 1 additional.
    let mut q = vec![0x52, 0x56, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
    for label in name.trim_end_matches('.').split('.') {
        let len = u8::try_from(label.len()).map_err(|_| format!("label too long: {label}"))?;
        q.push(len);
        q.extend_from_slice(label.as_bytes());
    }
    // QTYPE TXT (16), QCLASS IN; then the OPT record: root name, type 41,
    // UDP payload size 4096, no extended flags, no data.
    q.extend([0, 0, 16, 0, 1]);
    q.extend([0, 0, 41, 0x10, 0x00, 0, 0, 0, 0, 0, 0]);
    let local: SocketAddr = match to {
        SocketAddr::V4(_) => (IpAddr::from([0u8; 4]), 0).into(),
        SocketAddr::V6(_) => (IpAddr::from([0u16; 8]), 0).into(),
    };
    let s = ctx(UdpSocket::bind(local), "bind")?;
    ctx(s.connect(to), "connect")?;
    ctx(s.set_read_timeout(Some(Duration::from_secs(5))), "timeout")?;
    ctx(s.send(&q), "send")?;
    let mut buf = [0u8; 65536];
    let n = ctx(s.recv(&mut buf), "answer")?;
    if n < 12 {
        return Err(format!("an answer of {n} bytes"));
    }
    let tc = (buf[2] >> 1) & 1;
    let answers = u16::from_be_bytes([buf[6], buf[7]]);
    println!("answer {n} bytes, tc {tc}, {answers} records");
    Ok(())
}
