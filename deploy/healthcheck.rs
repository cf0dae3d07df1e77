//! A dependency-free health probe for container images that have no shell or curl.
//! Built with plain `rustc` in deploy/Dockerfile and used by container HEALTHCHECKs.
//!
//!   healthcheck http ADDR PATH        GET http://ADDR PATH; healthy on a 2xx status
//!   healthcheck grpc ADDR [SERVICE]   grpc.health.v1.Health/Check over cleartext
//!                                     HTTP/2; healthy when the answer is SERVING
//!
//! ADDR is host:port. Exits 0 when healthy, 1 otherwise (with the reason on stderr).

use std::{
    env,
    io::{Read, Write},
    net::{TcpStream, ToSocketAddrs},
    process::ExitCode,
    time::Duration,
};

const TIMEOUT: Duration = Duration::from_secs(3);

type Result<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["http", addr, path] => http(addr, path),
        ["grpc", addr] => grpc(addr, ""),
        ["grpc", addr, service] => grpc(addr, service),
        _ => Err("usage: healthcheck http HOST:PORT PATH | healthcheck grpc HOST:PORT [SERVICE]".to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("unhealthy: {reason}");
            ExitCode::FAILURE
        }
    }
}

fn connect(addr: &str) -> Result<TcpStream> {
    let target = addr
        .to_socket_addrs()
        .map_err(|error| format!("{addr}: {error}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))?;
    let stream = TcpStream::connect_timeout(&target, TIMEOUT).map_err(|error| format!("{addr}: {error}"))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .and_then(|()| stream.set_nodelay(true))
        .map_err(|error| error.to_string())?;
    Ok(stream)
}

fn io(error: std::io::Error) -> String {
    error.to_string()
}

// ---------------------------------------------------------------------------
// HTTP/1.1

fn http(addr: &str, path: &str) -> Result<()> {
    if !path.starts_with('/') {
        return Err(format!("path {path:?} must start with /"));
    }
    let mut stream = connect(addr)?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: healthcheck\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(io)?;
    // "HTTP/1.1 200" is all that is needed.
    let mut head = [0u8; 12];
    let mut filled = 0;
    while filled < head.len() {
        let read = stream.read(&mut head[filled..]).map_err(io)?;
        if read == 0 {
            break;
        }
        filled += read;
    }
    let line = String::from_utf8_lossy(&head[..filled]);
    let mut parts = line.split(' ');
    let version = parts.next().unwrap_or_default();
    let status = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") || status.len() != 3 {
        return Err(format!("{addr}{path}: not an HTTP response"));
    }
    if status.starts_with('2') {
        Ok(())
    } else {
        Err(format!("{addr}{path}: HTTP {status}"))
    }
}

// ---------------------------------------------------------------------------
// gRPC health over HTTP/2 with prior knowledge (h2c), as tonic servers speak it.

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;

const FLAG_ACK: u8 = 0x1;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;

const STREAM: u32 = 1;
const MAX_FRAME: usize = 1 << 20;
const MAX_FRAMES: usize = 64;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).unwrap_or(u32::MAX).to_be_bytes();
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&length[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an N-bit prefix; `first` carries the pattern bits.
fn hpack_int(out: &mut Vec<u8>, prefix_bits: u32, first: u8, value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// An HPACK string literal, not Huffman-coded.
fn hpack_str(out: &mut Vec<u8>, value: &str) {
    hpack_int(out, 7, 0x00, value.len());
    out.extend_from_slice(value.as_bytes());
}

/// "Literal header field without indexing" whose name is in the static table.
fn header_indexed_name(out: &mut Vec<u8>, name_index: usize, value: &str) {
    hpack_int(out, 4, 0x00, name_index);
    hpack_str(out, value);
}

/// "Literal header field without indexing" with a literal name.
fn header_literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0x00);
    hpack_str(out, name);
    hpack_str(out, value);
}

fn read_exact(stream: &mut TcpStream, buffer: &mut [u8]) -> Result<()> {
    stream
        .read_exact(buffer)
        .map_err(|error| format!("connection ended before the answer: {error}"))
}

fn grpc(addr: &str, service: &str) -> Result<()> {
    let mut stream = connect(addr)?;

    let mut block = Vec::new();
    block.push(0x83); // :method: POST (static index 3)
    block.push(0x86); // :scheme: http (static index 6)
    header_indexed_name(&mut block, 4, "/grpc.health.v1.Health/Check"); // :path
    header_indexed_name(&mut block, 1, addr); // :authority
    header_indexed_name(&mut block, 31, "application/grpc"); // content-type
    header_literal(&mut block, "te", "trailers");
    header_literal(&mut block, "user-agent", "healthcheck");

    // HealthCheckRequest { string service = 1; }
    let mut message = Vec::new();
    if !service.is_empty() {
        message.push(0x0a); // field 1, length-delimited
        let mut length = service.len();
        while length >= 0x80 {
            message.push((length & 0x7f) as u8 | 0x80);
            length >>= 7;
        }
        message.push(length as u8);
        message.extend_from_slice(service.as_bytes());
    }
    let mut body = vec![0u8]; // not compressed
    body.extend_from_slice(&u32::try_from(message.len()).unwrap_or(0).to_be_bytes());
    body.extend_from_slice(&message);

    let mut request = PREFACE.to_vec();
    request.extend(frame(SETTINGS, 0, 0, &[]));
    request.extend(frame(HEADERS, FLAG_END_HEADERS, STREAM, &block));
    request.extend(frame(DATA, FLAG_END_STREAM, STREAM, &body));
    stream.write_all(&request).map_err(io)?;

    let mut answer = Vec::new();
    let mut finished = false;
    for _ in 0..MAX_FRAMES {
        let mut header = [0u8; 9];
        read_exact(&mut stream, &mut header)?;
        let length = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let (kind, flags) = (header[3], header[4]);
        let stream_id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        if length > MAX_FRAME {
            return Err("oversized HTTP/2 frame".to_owned());
        }
        let mut payload = vec![0u8; length];
        read_exact(&mut stream, &mut payload)?;
        match kind {
            SETTINGS if flags & FLAG_ACK == 0 => {
                stream.write_all(&frame(SETTINGS, FLAG_ACK, 0, &[])).map_err(io)?;
            }
            PING if flags & FLAG_ACK == 0 => {
                stream.write_all(&frame(PING, FLAG_ACK, 0, &payload)).map_err(io)?;
            }
            GOAWAY => return Err("server closed the connection (GOAWAY)".to_owned()),
            RST_STREAM if stream_id == STREAM => return Err("server reset the request".to_owned()),
            DATA if stream_id == STREAM => {
                let mut data = payload.as_slice();
                if flags & FLAG_PADDED != 0 {
                    let pad = usize::from(*data.first().unwrap_or(&0));
                    data = data.get(1..data.len().saturating_sub(pad)).unwrap_or_default();
                }
                answer.extend_from_slice(data);
                finished = flags & FLAG_END_STREAM != 0;
            }
            HEADERS if stream_id == STREAM => finished = flags & FLAG_END_STREAM != 0,
            _ => {}
        }
        if finished {
            break;
        }
    }
    if !finished {
        return Err("no complete answer".to_owned());
    }
    // Polite close; errors here do not matter.
    let _ = stream.write_all(&frame(GOAWAY, 0, 0, &[0; 8]));

    if answer.len() < 5 {
        return Err(format!(
            "no health answer for service {service:?} (unknown service or server error)"
        ));
    }
    if answer[0] != 0 {
        return Err("compressed answer not supported".to_owned());
    }
    let declared = u32::from_be_bytes([answer[1], answer[2], answer[3], answer[4]]) as usize;
    let message = answer.get(5..5 + declared).ok_or("truncated answer")?;
    match serving_status(message)? {
        1 => Ok(()),
        status => Err(format!(
            "service {service:?} is {}",
            match status {
                0 => "UNKNOWN",
                2 => "NOT_SERVING",
                3 => "SERVICE_UNKNOWN",
                _ => "in an unknown state",
            }
        )),
    }
}

fn varint(bytes: &mut &[u8]) -> Result<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first().ok_or("truncated varint")?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint too long".to_owned())
}

/// Field 1 (`status`) of a HealthCheckResponse; absent means UNKNOWN (0).
fn serving_status(mut message: &[u8]) -> Result<u64> {
    let mut status = 0;
    while !message.is_empty() {
        let key = varint(&mut message)?;
        match key & 0x7 {
            0 => {
                let value = varint(&mut message)?;
                if key >> 3 == 1 {
                    status = value;
                }
            }
            1 => message = message.get(8..).ok_or("truncated field")?,
            2 => {
                let length = usize::try_from(varint(&mut message)?).map_err(|_| "bad length")?;
                message = message.get(length..).ok_or("truncated field")?;
            }
            5 => message = message.get(4..).ok_or("truncated field")?,
            _ => return Err("malformed health answer".to_owned()),
        }
    }
    Ok(status)
}
