//! Noticing that an HTTP/1 client has gone while its request is at the backend.
//!
//! hyper does not read an HTTP/1 connection while a request is being served (reading
//! would cost a fresh buffer per request), so a client that closes its connection is
//! otherwise noticed only when its answer is written, after the backend has done all
//! the work. The connection's watchdog, which wakes every 100 ms while a request is in
//! progress, asks the kernel instead: a non-blocking peek at the socket says whether
//! the client has closed (end of stream) or reset it, without taking any byte from
//! hyper. A client that does either while its request is at the backend cancels it,
//! as nginx does (it answers 499): the backend connection is closed and its slot freed
//! (DESIGN §6).
//!
//! The socket is owned by hyper inside the same connection future as the watchdog, so
//! no safe API reaches it; the peek uses its file descriptor, which stays open for as
//! long as that future runs.

use std::os::fd::RawFd;

/// Whether the peer of `fd` has closed or reset the connection. Pending bytes (a
/// pipelined request, the rest of a body) mean it has not.
#[allow(unsafe_code)] // see the module comment
pub(super) fn closed(fd: RawFd) -> bool {
    let mut byte = [0u8; 1];
    // SAFETY: `fd` is the open socket of the connection whose future calls this (the
    // socket outlives every call); the buffer is a valid one-byte slice; MSG_PEEK
    // leaves the data in the socket and MSG_DONTWAIT never blocks.
    let n = unsafe {
        libc::recv(
            fd,
            byte.as_mut_ptr().cast(),
            byte.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => true,
        n if n > 0 => false,
        _ => matches!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ECONNRESET | libc::EPIPE | libc::ENOTCONN | libc::ETIMEDOUT)
        ),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    #[test]
    fn a_closed_peer_is_seen_and_pending_bytes_are_left_in_place() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let fd = server.as_raw_fd();
        assert!(!closed(fd), "open and quiet");
        client.write_all(b"x").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut buf = [0u8; 1];
        while server.peek(&mut buf).unwrap_or(0) == 0 && std::time::Instant::now() < deadline {}
        assert!(!closed(fd), "bytes pending");
        assert_eq!(server.peek(&mut buf).unwrap(), 1, "the byte is still there");
        let mut drain = &server;
        std::io::Read::read_exact(&mut drain, &mut buf).unwrap();
        drop(client);
        while !closed(fd) && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert!(closed(fd), "closed by the peer");
    }
}
