//! The wire between an old process and the new one it starts: a Unix stream socket
//! pair. The old process sends one message, the new one answers one line.
//!
//! Old → new: an 8-byte header (the document's length and the number of descriptors,
//! little-endian `u32`s) carrying the listening sockets as `SCM_RIGHTS`, then the JSON
//! [`Handover`] document. New → old: `ready\n` once it serves. The socket stays open
//! until the old process exits, which is how the new one knows an old one still runs.
//!
//! Descriptors arrive close-on-exec (`MSG_CMSG_CLOEXEC`) and owned ([`OwnedFd`]), so
//! none leaks into a later upgrade's child.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use super::handover::Handover;

/// The most descriptors one hand-over carries (the kernel's `SCM_MAX_FD` is 253).
pub const MAX_FDS: usize = 250;

/// The largest document accepted.
const MAX_DOCUMENT: usize = 64 << 20;

/// The line the new process sends once it serves.
pub const READY: &[u8] = b"ready\n";

/// Sends the document and the sockets.
pub fn send(channel: &UnixStream, doc: &Handover, fds: &[OwnedFd]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::other(format!(
            "{} listening sockets; at most {MAX_FDS} can be handed over",
            fds.len()
        )));
    }
    let json = serde_json::to_vec(doc).map_err(io::Error::other)?;
    let mut header = [0u8; 8];
    header[..4].copy_from_slice(&(json.len() as u32).to_le_bytes());
    header[4..].copy_from_slice(&(fds.len() as u32).to_le_bytes());
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !borrowed.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        return Err(io::Error::other(
            "descriptors do not fit the control message",
        ));
    }
    let sent = rustix::net::sendmsg(
        channel,
        &[IoSlice::new(&header)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    // The descriptors went with the first byte; the rest of the header, if the kernel
    // took less, follows as plain bytes.
    let mut writer = channel;
    writer.write_all(&header[sent..])?;
    writer.write_all(&json)?;
    writer.flush()
}

/// Receives the document and the sockets, in the order the document lists them.
pub fn receive(channel: &UnixStream) -> io::Result<(Handover, Vec<OwnedFd>)> {
    let mut header = [0u8; 8];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        channel,
        &mut [IoSliceMut::new(&mut header)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if got.bytes == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the old process closed the channel before handing over",
        ));
    }
    let mut reader = channel;
    reader.read_exact(&mut header[got.bytes..])?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let count = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if len > MAX_DOCUMENT {
        return Err(io::Error::other(format!(
            "hand-over document of {len} bytes"
        )));
    }
    if count != fds.len() {
        return Err(io::Error::other(format!(
            "{count} sockets announced, {} received",
            fds.len()
        )));
    }
    let mut json = vec![0u8; len];
    reader.read_exact(&mut json)?;
    let doc: Handover = serde_json::from_slice(&json).map_err(io::Error::other)?;
    Ok((doc, fds))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::upgrade::handover::HandedSocket;

    #[test]
    fn sockets_and_document_cross_together_close_on_exec() {
        let (old, new) = UnixStream::pair().unwrap();
        let listeners: Vec<std::net::TcpListener> = (0..3)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        let doc = Handover {
            version: 1,
            from_pid: 7,
            sockets: (0..3)
                .map(|i| HandedSocket {
                    role: "listener".into(),
                    name: format!("l{i}"),
                    bind: None,
                })
                .collect(),
            backends: Vec::new(),
        };
        let fds: Vec<OwnedFd> = listeners.into_iter().map(OwnedFd::from).collect();
        send(&old, &doc, &fds).unwrap();
        drop(fds);
        let (got, received) = receive(&new).unwrap();
        assert_eq!(got.from_pid, 7);
        assert_eq!(got.sockets[2].name, "l2");
        for (fd, port) in received.into_iter().zip(ports) {
            let flags = rustix::io::fcntl_getfd(&fd).unwrap();
            assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
            let l = std::net::TcpListener::from(fd);
            assert_eq!(l.local_addr().unwrap().port(), port);
        }
    }

    #[test]
    fn a_closed_channel_is_an_error_not_an_empty_hand_over() {
        let (old, new) = UnixStream::pair().unwrap();
        drop(old);
        assert!(receive(&new).is_err());
    }
}
