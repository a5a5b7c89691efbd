//! Opening a connection to a backend as its pool's transport says: TCP, and for `h2`
//! and `https` the TLS handshake on it (DESIGN §12).
//!
//! A certificate that fails verification fails the connect, with rustls' reason in the
//! log at warn level (`invalid peer certificate: NotValidForName`, `UnknownIssuer`, a
//! client certificate the backend refused): an operator sees why a backend is
//! unreachable, and nothing is ever accepted silently.

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::backend_tls::BackendTls;

/// Opens a TCP connection to `addr` with Nagle off (no timeout: the caller bounds it).
pub async fn tcp(addr: SocketAddr) -> io::Result<TcpStream> {
    let io = TcpStream::connect(addr).await?;
    let _ = io.set_nodelay(true);
    Ok(io)
}

/// The TLS handshake on `tcp` to the backend named `backend` (its configured address,
/// whose host is verified unless the pool sets `server_name`). A failure is logged with
/// its reason and returned as an I/O error.
pub async fn tls(
    tls: &BackendTls,
    tcp: TcpStream,
    backend: &str,
) -> io::Result<TlsStream<TcpStream>> {
    let Some(name) = tls.name_for(backend) else {
        let e = io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{backend}: no name to verify its certificate by; set server_name in [pool.NAME.tls]"
            ),
        );
        tracing::warn!(backend, error = %e, "TLS to backend failed");
        return Err(e);
    };
    match TlsConnector::from(std::sync::Arc::clone(&tls.config))
        .connect(name, tcp)
        .await
    {
        Ok(s) => Ok(s),
        Err(e) => {
            tracing::warn!(backend, error = %e, "TLS to backend failed");
            Err(e)
        }
    }
}

/// Whether an HTTP/2-over-TLS connection agreed on `h2` (a backend that ignores ALPN
/// would answer HTTP/2 frames with HTTP/1.1).
pub fn negotiated_h2(stream: &TlsStream<TcpStream>) -> bool {
    stream.get_ref().1.alpn_protocol() == Some(b"h2")
}
