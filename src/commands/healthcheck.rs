//! `rebuilder healthcheck`: asks the `rebuilder serve` of this machine or
//! container for `/healthz` (or another path) at the address of
//! `service.listen`, and exits 0 on a 200, 1 otherwise. It is the image's
//! `HEALTHCHECK` and the ECS container health check: the image needs no
//! shell and no curl for it. One HTTP/1.1 request over a plain TCP
//! connection, bounded in time; nothing else is contacted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cli::HealthcheckArgs;
use crate::config::Settings;

pub async fn run(settings: &Settings, args: &HealthcheckArgs) -> anyhow::Result<ExitCode> {
    let address = probe_address(&settings.service.listen)?;
    if !args.path.starts_with('/') || args.path.chars().any(|c| c.is_whitespace()) {
        bail!("--path must be a path such as /healthz");
    }
    let limit = Duration::from_millis(args.timeout_ms);
    let status = tokio::time::timeout(limit, status_of(address, &args.path))
        .await
        .with_context(|| format!("GET {} at {address}: no answer within {limit:?}", args.path))?
        .with_context(|| format!("GET {} at {address}", args.path))?;
    if status != 200 {
        bail!("GET {} at {address} answered {status}", args.path);
    }
    println!("healthy: GET {} at {address} answered 200", args.path);
    Ok(ExitCode::SUCCESS)
}

/// Where to ask: the listen address, with an unspecified host (`0.0.0.0`,
/// `[::]`) replaced by loopback.
fn probe_address(listen: &str) -> anyhow::Result<SocketAddr> {
    let mut address: SocketAddr = listen
        .parse()
        .with_context(|| format!("service.listen {listen:?} is not an address"))?;
    if address.port() == 0 {
        bail!("service.listen {listen:?} picks a free port; the health check needs the real one");
    }
    match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => address.set_ip(Ipv4Addr::LOCALHOST.into()),
        IpAddr::V6(ip) if ip.is_unspecified() => address.set_ip(Ipv6Addr::LOCALHOST.into()),
        _ => {}
    }
    Ok(address)
}

/// The status code of `GET path`.
async fn status_of(address: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let mut stream = TcpStream::connect(address).await?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: rebuilder-healthcheck\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 8192 {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&buffer[..read]);
    }
    status_code(&head).with_context(|| {
        format!(
            "not an HTTP answer: {:?}",
            String::from_utf8_lossy(&head[..head.len().min(80)])
        )
    })
}

/// The code of an HTTP/1.x status line (`HTTP/1.1 200 OK`).
fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    parts.next().filter(|v| v.starts_with("HTTP/1."))?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_listen_address_is_probed_on_loopback() {
        assert_eq!(
            probe_address("0.0.0.0:8080").unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            probe_address("[::]:8080").unwrap(),
            "[::1]:8080".parse().unwrap()
        );
        assert_eq!(
            probe_address("10.1.2.3:9000").unwrap(),
            "10.1.2.3:9000".parse().unwrap()
        );
        assert!(probe_address("127.0.0.1:0").is_err());
    }

    #[test]
    fn the_status_code_is_read_from_the_status_line() {
        assert_eq!(
            status_code(b"HTTP/1.1 200 OK\r\ncontent-length: 2"),
            Some(200)
        );
        assert_eq!(
            status_code(b"HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_code(b""), None);
    }
}
