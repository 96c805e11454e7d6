//! Reporting for hooks that run unattended: each message goes to stderr and,
//! as one datagram, to the local syslog socket (`/dev/log`, read by
//! journald or rsyslog). Hooks must never fail because of this: every error
//! here is ignored.

use std::{io::Write, os::unix::net::UnixDatagram, path::PathBuf};

/// The local syslog socket.
pub const DEV_LOG: &str = "/dev/log";
/// Overrides [`DEV_LOG`] (for tests, and hosts whose syslog listens elsewhere).
pub const SOCKET_ENV: &str = "DHCPFIX_SYSLOG_SOCKET";
/// `LOG_DAEMON`.
const FACILITY_DAEMON: u8 = 3;
/// Longest message sent; syslog daemons truncate long datagrams anyway.
const MAX_MESSAGE: usize = 1024;

/// Syslog severities used here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Err = 3,
    Warning = 4,
    Info = 6,
}

/// Writes messages tagged `tag` to stderr and syslog.
#[derive(Debug)]
pub struct Reporter {
    tag: &'static str,
    socket: PathBuf,
}

impl Reporter {
    pub fn new(tag: &'static str) -> Self {
        let socket = std::env::var_os(SOCKET_ENV)
            .filter(|v| !v.is_empty())
            .map_or_else(|| PathBuf::from(DEV_LOG), PathBuf::from);
        Self { tag, socket }
    }

    /// Reports one line. Control characters (a newline in a domain name)
    /// become spaces so one message stays one log line.
    pub fn report(&self, severity: Severity, message: &str) {
        let clean: String = message
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let _ = writeln!(std::io::stderr(), "{}: {clean}", self.tag);
        let pri = FACILITY_DAEMON * 8 + severity as u8;
        let mut line = format!("<{pri}>{}[{}]: {clean}", self.tag, std::process::id());
        if line.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        // Non-blocking: a stuck or slow syslog daemon (its queue full) must
        // not hang the hook, and with it the guest's start.
        if let Ok(socket) = UnixDatagram::unbound() {
            if socket.set_nonblocking(true).is_ok() {
                let _ = socket.send_to(line.as_bytes(), &self.socket);
            }
        }
    }
}
