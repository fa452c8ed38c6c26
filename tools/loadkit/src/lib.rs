//! What the load generators in `tools/` (`bench`, `ws-compare`, `push-bench`) share: a
//! TCP connection from a chosen loopback source address, the clock their messages are
//! stamped with, and what `/proc` says of the processes they measure ([`proc`]).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::time::Duration;
//! let source = "127.0.1.1".parse()?;
//! let stream = loadkit::connect_from("127.0.0.1:8480".parse()?, source, Duration::from_secs(5)).await?;
//! let sent_at = loadkit::now_micros();
//! # drop((stream, sent_at)); Ok(()) }
//! ```

pub mod proc;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use tokio::net::{TcpSocket, TcpStream};

/// Microseconds since the Unix epoch: comparable between the processes of one machine,
/// so a recipient computes a message's latency from the sender's stamp.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A TCP connection to `addr` from `source` (the port chosen by the kernel at connect),
/// with `TCP_NODELAY`; fails when the connect takes longer than `timeout`.
pub async fn connect_from(
    addr: SocketAddr,
    source: IpAddr,
    timeout: Duration,
) -> anyhow::Result<TcpStream> {
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    no_port_at_bind(&socket)?;
    socket
        .bind(SocketAddr::new(source, 0))
        .with_context(|| format!("bind {source}"))?;
    let stream = tokio::time::timeout(timeout, socket.connect(addr))
        .await
        .with_context(|| format!("connect to {addr} timed out after {timeout:?}"))?
        .with_context(|| format!("connect to {addr} from {source}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Lets the kernel pick the source port at connect time, from the whole 4-tuple:
/// without `IP_BIND_ADDRESS_NO_PORT`, binding to port 0 searches for a port unused by
/// any connection of that address, which grows with every client (tens of seconds of
/// system time for 20,000 clients).
fn no_port_at_bind(socket: &TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket fd and a c_int option value of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connects_from_the_source_it_is_given() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let source: IpAddr = "127.0.1.7".parse().unwrap();
        let stream = connect_from(addr, source, Duration::from_secs(5))
            .await
            .unwrap();
        let (_, peer) = listener.accept().await.unwrap();
        assert_eq!(peer.ip(), source);
        assert_eq!(stream.local_addr().unwrap().ip(), source);
        assert!(stream.nodelay().unwrap());
    }

    #[tokio::test]
    async fn a_refused_connect_names_the_address() {
        // A port just freed: nothing listens on it.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let err = connect_from(addr, "127.0.0.1".parse().unwrap(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains(&addr.to_string()), "{err:#}");
    }

    #[test]
    fn the_clock_is_in_microseconds_since_1970() {
        let a = now_micros();
        // After 2020-01-01 and before 2100-01-01.
        assert!(
            a > 1_577_836_800_000_000 && a < 4_102_444_800_000_000,
            "{a}"
        );
        assert!(now_micros() >= a);
    }
}
