//! The gossip port: UDP and TCP on one port number, as Serf has it. With
//! port 0 the kernel picks the UDP port, and ephemeral ports are handed out
//! per protocol: the same number may already be someone's TCP port. Then
//! both are picked again rather than failing a start that asked for "any".

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, UdpSocket};

/// Picks of a free port tried before giving up (each one a port the kernel
/// gave for UDP that turned out taken for TCP).
pub const PORT_PICKS: usize = 16;

/// Binds UDP and TCP on `addr`, the same port for both.
pub async fn bind_gossip(addr: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let udp = bind_udp(addr).await?;
    pair_with_tcp(addr, udp).await
}

async fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    UdpSocket::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot bind UDP {addr}: {e}")))
}

/// Binds TCP on the port of `udp` (bound on `addr`). When `addr` asked for
/// any port and that port is taken for TCP, binds both again on a new pick.
async fn pair_with_tcp(
    addr: SocketAddr,
    mut udp: UdpSocket,
) -> io::Result<(UdpSocket, TcpListener)> {
    let mut pick = 1;
    loop {
        let bound = udp.local_addr()?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e)
                if addr.port() == 0
                    && e.kind() == io::ErrorKind::AddrInUse
                    && pick < PORT_PICKS =>
            {
                tracing::debug!(
                    port = bound.port(),
                    "the UDP port is taken for TCP; picking another"
                );
                // The new pick is made while the old UDP socket is still
                // held, so the kernel cannot give the same port back.
                udp = bind_udp(addr).await?;
                pick += 1;
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot bind TCP {bound}: {e}"),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UDP socket on the port of a TCP listener held by "someone else".
    async fn udp_on_a_taken_tcp_port() -> (TcpListener, UdpSocket) {
        for _ in 0..50 {
            let tcp = TcpListener::bind("127.0.0.1:0").await.expect("tcp");
            let taken = tcp.local_addr().expect("addr");
            if let Ok(udp) = UdpSocket::bind(taken).await {
                return (tcp, udp);
            }
        }
        panic!("no port free for UDP among 50 TCP picks");
    }

    #[tokio::test]
    async fn any_port_whose_tcp_twin_is_taken_is_picked_again() {
        let (other, udp) = udp_on_a_taken_tcp_port().await;
        let taken = other.local_addr().expect("addr").port();
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let (udp, tcp) = pair_with_tcp(any, udp).await.expect("another pick");
        let port = udp.local_addr().expect("udp").port();
        assert_ne!(port, taken);
        assert_eq!(tcp.local_addr().expect("tcp").port(), port);
    }

    #[tokio::test]
    async fn a_given_port_taken_for_tcp_is_an_error_that_names_it() {
        let (other, udp) = udp_on_a_taken_tcp_port().await;
        let taken = other.local_addr().expect("addr");
        let err = pair_with_tcp(taken, udp).await.expect_err("taken");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(
            err.to_string()
                .contains(&format!("cannot bind TCP {taken}")),
            "{err}"
        );
    }
}
