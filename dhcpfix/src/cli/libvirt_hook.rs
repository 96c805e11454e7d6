//! `dhcpfix libvirt-hook [--audit] [--ports P] -- DOMAIN OPERATION SUB-OPERATION EXTRA`
//!
//! Run by libvirt's qemu hook (contrib/libvirt/qemu.d/dhcpfix) with the
//! domain XML on stdin. Attaches to the domain's taps at `start`, `started`
//! and `reconnect`, detaches at `stopped` and `release`, ignores the rest.
//!
//! libvirt's rules for hooks, kept here: nothing on stdout (libvirt parses
//! it for `migrate` and `restore`), no calls back into libvirt (deadlock),
//! and exit 0 whatever happens, since a failing hook stops the guest from
//! starting; problems go to stderr and syslog instead.

use std::{
    ffi::OsString,
    io::{self, IsTerminal, Read},
    panic::{self, AssertUnwindSafe},
    path::Path,
};

use dhcpfix::{
    attach::{self, AttachError, AttachOptions, Attached, Detached, Mode},
    integrations::{
        libvirt::{self, Domain, Plan, MAX_XML_BYTES},
        syslog::{Reporter, Severity},
    },
    netdev,
    netns::Netns,
    pins::{PinDir, HOOK_LOCK_TIMEOUT},
};

/// Most bytes read (and thrown away) from stdin for operations the hook
/// ignores, so libvirt's write does not fail on a closed pipe.
const MAX_DRAIN_BYTES: u64 = 256 << 20;
/// Tag in syslog and on stderr.
const TAG: &str = "dhcpfix-libvirt-hook";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Attach in audit mode (count, change nothing).
    #[arg(long)]
    pub audit: bool,
    /// UDP destination ports to act on (at most 4).
    #[arg(long, value_delimiter = ',', default_values_t = dhcpfix_common::config::DEFAULT_PORTS)]
    pub ports: Vec<u16>,
    /// libvirt's arguments: domain name, operation, sub-operation, extra.
    /// Pass them after `--` so no domain name is taken for an option.
    #[arg(
        value_name = "LIBVIRT_ARGS",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub hook_args: Vec<OsString>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Attach,
    Detach,
}

fn action_for(operation: &str) -> Option<Action> {
    match operation {
        "start" | "started" | "reconnect" => Some(Action::Attach),
        "stopped" | "release" => Some(Action::Detach),
        _ => None,
    }
}

/// Never fails: the exit status must stay 0 (see the module comment).
pub fn run(pin_dir: &Path, args: Args) -> anyhow::Result<()> {
    let reporter = Reporter::new(TAG);
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| hook(pin_dir, &args, &reporter)));
    if outcome.is_err() {
        reporter.report(Severity::Err, "internal error (panic); the guest was left alone");
    }
    Ok(())
}

fn arg(args: &Args, i: usize) -> String {
    args.hook_args
        .get(i)
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn hook(pin_dir: &Path, args: &Args, reporter: &Reporter) {
    let domain = arg(args, 0);
    let operation = arg(args, 1);
    let Some(action) = action_for(&operation) else {
        drain_stdin();
        return;
    };
    // Untrusted text is always shown quoted and escaped ({:?}).
    let say = |severity: Severity, msg: String| {
        reporter.report(severity, &format!("domain {domain:?} {operation}: {msg}"));
    };
    let xml = match read_stdin() {
        Ok(xml) => xml,
        Err(e) => {
            say(Severity::Err, format!("{e}; no interface touched"));
            return;
        }
    };
    let parsed = match libvirt::parse_domain(&xml) {
        Ok(d) => d,
        Err(e) => {
            say(Severity::Err, format!("{e}; no interface touched"));
            return;
        }
    };
    if parsed.ignored > 0 {
        say(
            Severity::Warning,
            format!(
                "{} interfaces beyond the first {} left alone",
                parsed.ignored,
                libvirt::MAX_DOMAIN_INTERFACES
            ),
        );
    }
    for iface in &parsed.interfaces {
        match &iface.plan {
            Plan::Skip(reason) => say(Severity::Info, format!("{iface} skipped: {reason}")),
            Plan::Refuse(reason) => say(Severity::Warning, format!("{iface} skipped: {reason}")),
            Plan::Tap(_) => {}
        }
    }
    let netns = match Netns::current() {
        Ok(n) => n,
        Err(e) => {
            say(Severity::Err, format!("{e}; no interface touched"));
            return;
        }
    };
    match action {
        Action::Attach if parsed.taps().next().is_some() => attach_all(pin_dir, &netns, args, &parsed, &say),
        Action::Attach => {}
        Action::Detach => detach_all(pin_dir, &netns, &parsed, &say),
    }
}

fn attach_all(pin_dir: &Path, netns: &Netns, args: &Args, domain: &Domain, say: &dyn Fn(Severity, String)) {
    let pins = match PinDir::prepare(pin_dir) {
        Ok(p) => p,
        Err(e) => {
            say(Severity::Err, format!("{e}; nothing attached"));
            return;
        }
    };
    let opts = AttachOptions {
        mode: if args.audit { Mode::Audit } else { Mode::Fill },
        ports: args.ports.clone(),
        // A guest's start waits for the hook.
        lock_timeout: HOOK_LOCK_TIMEOUT,
        ..Default::default()
    };
    for iface in domain.taps() {
        let Plan::Tap(name) = &iface.plan else { continue };
        match attach::attach(&pins, netns, name, &opts) {
            Ok(Attached::New(method)) => say(
                Severity::Info,
                format!("{name} attached ({method}, {})", opts.mode),
            ),
            Ok(Attached::Existing(method)) => say(
                Severity::Info,
                format!("{name} already attached ({method}), now {}", opts.mode),
            ),
            Err(e @ (AttachError::NoInterface { .. } | AttachError::ReceivePathTap { .. })) => {
                say(Severity::Warning, format!("{e}; not attached"))
            }
            Err(e) => say(Severity::Err, format!("{name}: {e}")),
        }
    }
}

/// At `stopped` and `release`. libvirt names a generated tap (`vnetN`) in
/// the XML while the guest runs, but clears the name before these hook
/// calls; the NIC's `<mac>` stays. So taps named in the XML are detached by
/// name, and the remains of every attachment whose interface is gone and
/// whose recorded MAC is one of the guest's tap MACs are removed too.
fn detach_all(pin_dir: &Path, netns: &Netns, domain: &Domain, say: &dyn Fn(Severity, String)) {
    let pins = match PinDir::open(pin_dir) {
        Ok(Some(p)) => p,
        Ok(None) => return,
        Err(e) => {
            say(Severity::Err, format!("{e}; nothing detached"));
            return;
        }
    };
    for iface in domain.taps() {
        let Plan::Tap(name) = &iface.plan else { continue };
        // The tap normally vanished with QEMU. If a device of that name
        // exists, it may be a persistent tap, or the name may already belong
        // to another guest: only the MAC tells.
        if let (Some(index), Some(guest_mac)) = (netdev::ifindex(name), &iface.mac) {
            if let Ok(Some(link)) = netdev::link(index) {
                if !libvirt::tap_mac_matches(&link.mac, guest_mac) {
                    say(
                        Severity::Info,
                        format!(
                            "{name} now has MAC {}, not this guest's {guest_mac}: it belongs to \
                             another guest; left attached",
                            link.mac_string()
                        ),
                    );
                    continue;
                }
            }
        }
        match attach::detach(&pins, netns, name, HOOK_LOCK_TIMEOUT) {
            Ok(Detached::Removed) => say(Severity::Info, format!("{name} detached")),
            Ok(Detached::NotAttached) => {}
            Err(e) => say(Severity::Err, format!("{name}: {e}")),
        }
    }
    let macs: Vec<String> = domain.interfaces.iter().filter_map(|i| i.mac.clone()).collect();
    match attach::forget_stopped_guest(&pins, netns, &macs, HOOK_LOCK_TIMEOUT) {
        Ok(gone) => {
            for g in gone {
                say(
                    Severity::Info,
                    format!("{} detached (gone with the guest; found by its MAC)", g.name),
                );
            }
        }
        Err(e) => say(Severity::Err, format!("removing the guest's attachments: {e}")),
    }
}

/// Errors reading the domain XML. One line each, cause included (no
/// `source()`, so a chain never prints it twice).
#[derive(Debug, thiserror::Error)]
enum StdinError {
    #[error("no domain XML: stdin is a terminal (libvirt passes the XML on stdin)")]
    Terminal,
    #[error("reading the domain XML from stdin (read(2)): {0}")]
    Read(io::Error),
    #[error("the domain XML on stdin is larger than {} MiB; giving up", MAX_XML_BYTES >> 20)]
    TooLarge,
}

/// Reads at most [`MAX_XML_BYTES`]; beyond that, drains the rest and fails.
fn read_stdin() -> Result<Vec<u8>, StdinError> {
    let stdin = io::stdin();
    if stdin.is_terminal() {
        return Err(StdinError::Terminal);
    }
    let mut xml = Vec::new();
    stdin
        .lock()
        .take(MAX_XML_BYTES as u64 + 1)
        .read_to_end(&mut xml)
        .map_err(StdinError::Read)?;
    if xml.len() > MAX_XML_BYTES {
        drain_stdin();
        return Err(StdinError::TooLarge);
    }
    Ok(xml)
}

/// Reads and discards stdin (bounded), unless it is a terminal.
fn drain_stdin() {
    let stdin = io::stdin();
    if stdin.is_terminal() {
        return;
    }
    let _ = io::copy(&mut stdin.lock().take(MAX_DRAIN_BYTES), &mut io::sink());
}
