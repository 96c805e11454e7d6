//! The netlink transport under [`super::rtnetlink`] and
//! [`super::sock_diag`]: one socket per request, whole datagrams received,
//! every message of a datagram decoded in order, and one error type that
//! names the request.

use std::io;

use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable, NLM_F_ACK,
    NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_sys::{Socket, SocketAddr};

/// Errors on a netlink socket. `request` names what was asked:
/// `rtnetlink RTM_GETLINK dump`, `sock_diag SOCK_DIAG_BY_FAMILY dump`, ...
///
/// Each message carries its cause and is one line; there is no
/// [`std::error::Error::source`], so a chain never prints a cause twice.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// socket(2), bind(2), connect(2) or a socket option.
    #[error("{request}: {call}: {error}")]
    Socket {
        request: &'static str,
        call: &'static str,
        error: io::Error,
    },
    /// send(2) or recv(2) failed, or the kernel answered with an errno.
    #[error("{request}: {error}")]
    Request { request: &'static str, error: io::Error },
    #[error("{request}: undecodable reply: {reason}")]
    Decode { request: &'static str, reason: String },
}

impl NetlinkError {
    /// The errno the kernel (or a syscall) answered with.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::Socket { error, .. } | Self::Request { error, .. } => error.raw_os_error(),
            Self::Decode { .. } => None,
        }
    }
}

/// One message of a datagram.
pub(crate) enum Part<I> {
    Message(I),
    /// `NLMSG_DONE`: the end of a dump.
    Done,
    /// `NLMSG_ERROR` with code 0: an acknowledgement.
    Ack,
    /// `NLMSG_ERROR`: the kernel refused the request.
    Error(io::Error),
}

/// Calls `each` for every message of one datagram, in order. Stops at a
/// message that does not decode (`Err`, with the reason).
pub(crate) fn decode<I: NetlinkDeserializable>(
    mut bytes: &[u8],
    mut each: impl FnMut(Part<I>),
) -> Result<(), String> {
    while !bytes.is_empty() {
        let msg = NetlinkMessage::<I>::deserialize(bytes).map_err(|e| e.to_string())?;
        let len = msg.header.length as usize;
        match msg.payload {
            NetlinkPayload::InnerMessage(inner) => each(Part::Message(inner)),
            NetlinkPayload::Done(_) => each(Part::Done),
            NetlinkPayload::Error(e) if e.code.is_none() => each(Part::Ack),
            NetlinkPayload::Error(e) => each(Part::Error(e.to_io())),
            // Noop, Overrun, and whatever a later version adds.
            _ => {}
        }
        if len == 0 || len > bytes.len() {
            break;
        }
        // Messages are 4-byte aligned (NLMSG_ALIGN).
        bytes = &bytes[len.next_multiple_of(4).min(bytes.len())..];
    }
    Ok(())
}

/// Receives one whole datagram into `buf` (which is cleared first): its
/// size is peeked first, so nothing is cut off.
pub(crate) fn recv_datagram(socket: &Socket, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.clear();
    let size = socket.recv(buf, libc::MSG_PEEK | libc::MSG_TRUNC)?;
    buf.clear();
    buf.reserve(size);
    socket.recv(buf, 0)?;
    Ok(())
}

/// A socket of `protocol` (`NETLINK_ROUTE`, `NETLINK_SOCK_DIAG`) connected
/// to the kernel.
pub(crate) fn connect(protocol: isize, request: &'static str) -> Result<Socket, NetlinkError> {
    let err = |call| move |error| NetlinkError::Socket { request, call, error };
    let mut socket = Socket::new(protocol).map_err(err("socket(AF_NETLINK)"))?;
    socket.bind_auto().map_err(err("bind(2)"))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(err("connect(2)"))?;
    Ok(socket)
}

/// How long the kernel may take to answer a request: it answers at once,
/// so reaching this means no answer is coming (a bug, not a slow kernel).
const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn set_receive_timeout(socket: &Socket, timeout: std::time::Duration) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: setsockopt reads one timeval from a live local; the socket's
    // descriptor is open for the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sends one request and collects what answers it: every message of a
/// dump (up to `NLMSG_DONE`), or the single reply of a plain request.
pub(crate) fn request<I>(
    protocol: isize,
    msg: I,
    dump: bool,
    request: &'static str,
) -> Result<Vec<I>, NetlinkError>
where
    I: NetlinkSerializable + NetlinkDeserializable,
{
    let io_err = |error| NetlinkError::Request { request, error };
    let socket = connect(protocol, request)?;
    set_receive_timeout(&socket, REPLY_TIMEOUT).map_err(|error| NetlinkError::Socket {
        request,
        call: "setsockopt(SO_RCVTIMEO)",
        error,
    })?;
    let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(msg));
    // A plain request asks for an ACK: a command that succeeds (RTM_NEWNSID)
    // answers nothing otherwise, and the wait below would never end.
    packet.header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { NLM_F_ACK };
    packet.header.sequence_number = 1;
    packet.finalize();
    let mut out = vec![0; packet.buffer_len()];
    packet.serialize(&mut out);
    socket.send(&out, 0).map_err(io_err)?;

    let mut replies = Vec::new();
    let mut buf = Vec::new();
    loop {
        match recv_datagram(&socket, &mut buf) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io_err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer from the kernel within {} s", REPLY_TIMEOUT.as_secs()),
                )))
            }
            Err(e) => return Err(io_err(e)),
        }
        if buf.is_empty() {
            return Err(io_err(io::ErrorKind::UnexpectedEof.into()));
        }
        let mut end: Option<Result<(), io::Error>> = None;
        decode::<I>(&buf, |part| {
            if end.is_some() {
                return;
            }
            match part {
                Part::Message(m) => {
                    replies.push(m);
                    if !dump {
                        end = Some(Ok(()));
                    }
                }
                Part::Done => end = Some(Ok(())),
                Part::Ack if !dump => end = Some(Ok(())),
                Part::Ack => {}
                Part::Error(e) => end = Some(Err(e)),
            }
        })
        .map_err(|reason| NetlinkError::Decode { request, reason })?;
        match end {
            Some(Ok(())) => return Ok(replies),
            Some(Err(e)) => return Err(io_err(e)),
            None => {}
        }
    }
}
