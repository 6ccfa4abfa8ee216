//! The takeover socket's framing (FORMAT.md, "Takeover protocol"): each
//! message is a 4-byte big-endian length and that many bytes of JSON; the
//! descriptors a message carries (`SCM_RIGHTS`) come with its first byte.
//!
//! Sending and receiving wait at most a given time, with `poll` and
//! non-blocking calls rather than a socket timeout: a confined daemon may
//! not `setsockopt` (`sandbox`). A peer that stops reading must not hold a
//! daemon (which holds back lookups while it sends the state) for longer
//! than that.

use std::io::{self, IoSlice, IoSliceMut, Read};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The largest message accepted: a daemon's lookup table of a few million
/// inodes fits; a peer cannot make the other side allocate more.
pub const MAX_MESSAGE: u32 = 256 << 20;
/// The most descriptors one message may carry (a mount and its Index).
pub const MAX_FDS: usize = 4;

/// Sends `message`, with `fds` attached, within `timeout`: `TimedOut` if
/// the peer did not take it all by then.
pub fn send<T: Serialize>(
    stream: &mut UnixStream,
    message: &T,
    fds: &[BorrowedFd<'_>],
    timeout: Duration,
) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    let body = serde_json::to_vec(message).map_err(io::Error::other)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&n| n <= MAX_MESSAGE)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "message too large"))?;
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors for one message",
        ));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    drop(body);
    let mut sent = 0;
    while sent < frame.len() {
        wait_for(stream, libc::POLLOUT, deadline)?;
        // The descriptors go with the first byte: with every attempt until
        // one sendmsg took some bytes.
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if sent == 0 && !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::other("no room for the descriptors"));
        }
        match rustix::net::sendmsg(
            stream.as_fd(),
            &[IoSlice::new(&frame[sent..])],
            &mut control,
            SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
        ) {
            Ok(n) => sent += n,
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Waits until `stream` has something to read (or its peer went) by
/// `deadline`; `TimedOut` after it.
pub fn wait_readable(stream: &UnixStream, deadline: Instant) -> io::Result<()> {
    wait_for(stream, libc::POLLIN, deadline)
}

/// Waits until `stream` is ready for `events` (or its peer went) by
/// `deadline`; `TimedOut` after it.
fn wait_for(stream: &UnixStream, events: libc::c_short, deadline: Instant) -> io::Result<()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let millis = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
        let mut poll = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(stream),
            events,
            revents: 0,
        };
        // SAFETY: one pollfd we own, for a descriptor `stream` keeps open.
        match unsafe { libc::poll(&mut poll, 1, millis) } {
            n if n > 0 => return Ok(()),
            0 if Instant::now() >= deadline => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the other side did not answer in time",
                ));
            }
            0 => continue,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// Reads exactly `buf.len()` bytes by `deadline`.
fn read_exact_by(stream: &mut UnixStream, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        wait_readable(stream, deadline)?;
        match stream.read(&mut buf[got..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Receives one message and the descriptors that came with it, waiting at
/// most `timeout`. An orderly end of the stream before a message is
/// `UnexpectedEof`.
pub fn receive<T: DeserializeOwned>(
    stream: &mut UnixStream,
    timeout: Duration,
) -> io::Result<(T, Vec<OwnedFd>)> {
    let deadline = Instant::now() + timeout;
    let mut header = [0u8; 4];
    let mut fds = Vec::new();
    let mut got = 0;
    while got < header.len() {
        wait_readable(stream, deadline)?;
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = match rustix::net::recvmsg(
            stream.as_fd(),
            &mut [IoSliceMut::new(&mut header[got..])],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(r) => r,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        if received.bytes == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the other side closed the connection",
            ));
        }
        if received.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "more descriptors than a message may carry",
            ));
        }
        got += received.bytes;
    }
    let mut body = vec![0u8; body_len(header)?];
    read_exact_by(stream, &mut body, deadline)?;
    Ok((decode(&body)?, fds))
}

/// The length of the body a message's `header` announces; `InvalidData`
/// beyond [`MAX_MESSAGE`], before anything is allocated. Apart from
/// [`receive`]'s socket calls, so that what a peer sends is fuzzed as the
/// receiver reads it (`cli/fuzz`, target `takeover`).
pub fn body_len(header: [u8; 4]) -> io::Result<usize> {
    let len = u32::from_be_bytes(header);
    if len > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a message of {len} bytes (at most {MAX_MESSAGE})"),
        ));
    }
    Ok(len as usize)
}

/// Decodes a message's `body` (JSON); `InvalidData` if it is not a `T`.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> io::Result<T> {
    serde_json::from_slice(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn messages_and_descriptors_cross_in_order() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let file = tempfile::tempfile().unwrap();
        let quick = Duration::from_secs(5);
        send(&mut a, &serde_json::json!({"n": 1}), &[file.as_fd()], quick).unwrap();
        send(&mut a, &serde_json::json!({"n": 2}), &[], quick).unwrap();
        let (first, fds): (serde_json::Value, _) = receive(&mut b, Duration::from_secs(5)).unwrap();
        assert_eq!(first["n"], 1);
        assert_eq!(fds.len(), 1);
        assert_ne!(fds[0].as_raw_fd(), file.as_raw_fd());
        let (second, fds): (serde_json::Value, _) =
            receive(&mut b, Duration::from_secs(5)).unwrap();
        assert_eq!(second["n"], 2);
        assert!(fds.is_empty());
        drop(a);
        let end = receive::<serde_json::Value>(&mut b, Duration::from_secs(5)).unwrap_err();
        assert_eq!(end.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_silent_peer_times_out() {
        let (_a, mut b) = UnixStream::pair().unwrap();
        let started = Instant::now();
        let err = receive::<serde_json::Value>(&mut b, Duration::from_millis(200)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    /// A peer that stops reading holds the sender no longer than its
    /// timeout, however large the message.
    #[test]
    fn a_peer_that_stops_reading_times_the_sender_out() {
        let (mut a, _b) = UnixStream::pair().unwrap();
        let big = "x".repeat(8 << 20);
        let started = Instant::now();
        let err = send(&mut a, &big, &[], Duration::from_millis(300)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// What [`receive`] reads, decoded without a socket: the length is
    /// checked before any allocation, the body must be one JSON value.
    #[test]
    fn headers_and_bodies_decode_without_a_socket() {
        assert_eq!(body_len(7u32.to_be_bytes()).unwrap(), 7);
        assert_eq!(
            body_len(MAX_MESSAGE.to_be_bytes()).unwrap(),
            MAX_MESSAGE as usize
        );
        let err = body_len((MAX_MESSAGE + 1).to_be_bytes()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let value: serde_json::Value = decode(br#"{"n": 1}"#).unwrap();
        assert_eq!(value["n"], 1);
        for bad in [&b""[..], b"{", b"{} {}", b"\xff"] {
            let err = decode::<serde_json::Value>(bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        }
    }

    #[test]
    fn an_oversized_length_is_refused_before_allocating() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.write_all(&u32::MAX.to_be_bytes()).unwrap();
        let err = receive::<serde_json::Value>(&mut b, Duration::from_secs(5)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
