//! A self-contained reproduction of the vhost-net DHCP checksum problem,
//! without VMs.
//!
//! ```text
//!  host netns                                guest netns
//!  dnsmasq --interface=br0                   DHCP client on eth0
//!      br0 (10.199.N.1/24)                       |
//!       |                                       eth0 = tap, no vnet header (Legacy)
//!    vnet0 = tap with IFF_VNET_HDR                 or with vnet header + TUN_F_CSUM (Modern)
//!       |   TUNSETOFFLOAD TUN_F_CSUM (On) / 0 (Off)
//!       +--> relay thread ("vhost") holding both tap fds
//! ```
//!
//! Host -> guest frames lose their 10-byte `virtio_net_hdr` (Legacy) or keep
//! it (Modern); guest -> host frames get a zero header (Legacy) or keep
//! theirs (Modern). With offload on and a legacy guest, DHCP replies reach
//! the guest with an unfinished UDP checksum, as on a real KVM host.
//!
//! The host side is a libvirt host by default ([`Host::Libvirt`]). It can
//! be a KubeVirt virt-launcher pod instead ([`Host::Pod`],
//! docs/kubevirt.md): the pod's namespace pinned by a CRI runtime
//! (`/run/netns/cni-<uuid>`) or held only by its processes, its host name
//! (UTS) the VMI's name, the bridge `k6t-eth0` with the tap `tap0` and the
//! renamed CNI interface `eth0-nic` (its peer `eth0` keeps the name), and
//! a DHCP server on an ordinary UDP socket ([`dhcpd`]) instead of dnsmasq:
//!
//! ```text
//!  pod netns (cni-<uuid>, or only a process's)     guest netns
//!  "pause": sleep in a UTS namespace, hostname VMI  DHCP client on eth0
//!  DHCP server (UDP socket on 0.0.0.0:67)              |
//!      k6t-eth0 (10.199.N.1/24) --- eth0-nic == eth0   eth0 (as above)
//!       |
//!      tap0 = tap with IFF_VNET_HDR --> relay thread
//! ```
//!
//! A lab is a [`Sandbox`] of [`PLACE`]: namespaces `dfx-<pid>-<n>-h` / `-g`
//! (a pinned pod's is `cni-<uuid>`, listed in the sandbox) and a work
//! directory `/run/dhcpfix-lab/dfx-<pid>-<n>/`. [`Lab::destroy`] (or `Drop`)
//! removes them, the sandbox's signal cleanup covers SIGINT/SIGTERM, and
//! [`clean_stale`] covers labs whose process was SIGKILLed (a pod's
//! processes die with the process that made them).

mod clients;
mod dhcpd;
pub mod flood;
mod relay;

use std::ffi::OsStr;
use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use clients::{Client, ClientOutcome, Dhclient, ScriptEvent};
pub use dhcpd::DhcpdStats;
pub use relay::{DhcpFrame, RelayStats};

use crate::kit::{find_tool, is_root, netns, poll, process, KitError, Netns, Place, Sandbox};

/// Name of the host tap (in the host namespace).
pub const HOST_TAP: &str = "vnet0";
/// Name of the guest tap (in the guest namespace).
pub const GUEST_TAP: &str = "eth0";
/// Name of the bridge dnsmasq serves (in the host namespace).
pub const BRIDGE: &str = "br0";
/// The guest's tap in a KubeVirt pod (primary network; docs/kubevirt.md).
pub const POD_TAP: &str = "tap0";
/// The bridge of a KubeVirt pod's primary network.
pub const POD_BRIDGE: &str = "k6t-eth0";
/// The pod's CNI interface once KubeVirt's bridge binding renamed it.
pub const POD_NIC: &str = "eth0-nic";
/// The interface that keeps the name `eth0` in the pod (a dummy in
/// KubeVirt; here the other end of `eth0-nic`, both in the pod).
pub const POD_ETH: &str = "eth0";
/// Parent of the per-lab work directories.
pub const LAB_RUN_DIR: &str = "/run/dhcpfix-lab";
/// Where labs live: `dfx-<pid>-<n>`, root-only work directories.
pub const PLACE: Place = Place {
    prefix: "dfx",
    run_dir: LAB_RUN_DIR,
    mode: 0o700,
};

/// Checksum offload of the host tap (`TUNSETOFFLOAD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Offload {
    /// `TUN_F_CSUM`: the host kernel may hand out CHECKSUM_PARTIAL frames.
    On,
    /// No offload: the host kernel finishes every checksum.
    Off,
}

/// What the guest side of the relay looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GuestKind {
    /// Guest tap without vnet header: NEEDS_CSUM is lost, like an old guest
    /// whose DHCP client verifies the (unfinished) UDP checksum.
    Legacy,
    /// Guest tap with vnet header and `TUN_F_CSUM`; the header is passed
    /// through, like a guest kernel that honours NEEDS_CSUM.
    Modern,
}

/// The DHCP server on the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Server {
    /// dnsmasq (DHCPv4, and DHCPv6 with [`LabOptions::dhcpv6`]): replies
    /// go out through its UDP socket, as `CHECKSUM_PARTIAL` skbs. Leases
    /// of at least two minutes.
    Dnsmasq,
    /// busybox udhcpd (DHCPv4 only), for leases shorter than dnsmasq's two
    /// minutes. It sends replies to clients without an address through a
    /// packet socket with the checksum computed (not partial), and those to
    /// a client's address (renewals) through its UDP socket (partial).
    Udhcpd,
}

/// What the lab looks like. [`LabOptions::new`] gives the classic lab
/// (dnsmasq, DHCPv4, ten-minute leases); the other fields change one thing
/// each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LabOptions {
    pub offload: Offload,
    pub guest: GuestKind,
    pub server: Server,
    /// The lease the server gives (dnsmasq raises anything below two
    /// minutes to two minutes).
    pub lease: Duration,
    /// T1 and T2 the server sends (DHCPv4 options 58 and 59; dnsmasq
    /// only). Without them dnsmasq sends half and seven eighths of the
    /// lease, less a random second or so, and udhcpd sends neither.
    pub renew: Option<Duration>,
    pub rebind: Option<Duration>,
    /// DHCPv6 too (dnsmasq only): the bridge gets an address in a ULA /64
    /// of its own and dnsmasq gives out addresses (IA_NA) from it; IPv6
    /// duplicate address detection is off on both sides, so link-local
    /// addresses are usable at once.
    pub dhcpv6: bool,
}

impl LabOptions {
    /// dnsmasq, DHCPv4 only, ten-minute leases.
    pub fn new(offload: Offload, guest: GuestKind) -> Self {
        Self {
            offload,
            guest,
            server: Server::Dnsmasq,
            lease: Duration::from_secs(600),
            renew: None,
            rebind: None,
            dhcpv6: false,
        }
    }
}

/// What plays the host side of the guest's tap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A libvirt host: `vnet0` on `br0`, the server of [`LabOptions`], in a
    /// namespace of the lab's own (`<lab>-h`).
    Libvirt,
    /// A KubeVirt virt-launcher pod, with its own DHCP server (DHCPv4 on a
    /// UDP socket; [`LabOptions::server`] and `dhcpv6` do not apply).
    Pod(Pod),
}

/// A KubeVirt virt-launcher pod (see the module).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// The VMI's name: the pod's host name, as virt-controller sets it.
    pub vmi: String,
    /// How its network namespace is held.
    pub netns: PodNetns,
}

/// How a pod's network namespace is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodNetns {
    /// Pinned by the CRI runtime, as containerd does:
    /// `/run/netns/cni-<uuid>`.
    Pinned,
    /// Held only by the pod's processes (no bind mount anywhere): found
    /// through `/proc/PID/ns/net`.
    Process,
}

/// Everything that can go wrong in the lab. Messages are one line: what
/// failed, why, and where useful what to do (as [`KitError`]'s: the
/// system's error in the message, not a separate source).
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("the network lab needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN): re-run as root")]
    NotRoot,
    #[error(transparent)]
    Kit(#[from] KitError),
    #[error("open /dev/net/tun: {error}: load the tun module (modprobe tun)")]
    TunOpen { error: std::io::Error },
    #[error("TUNSETIFF {name}: {error}")]
    TunSetIff { name: String, error: std::io::Error },
    #[error("TUNSETOFFLOAD {name} (flags {flags:#x}): {error}")]
    TunSetOffload {
        name: String,
        flags: u32,
        error: std::io::Error,
    },
    #[error("{server} in {netns} exited during startup ({status}): {log}")]
    DnsmasqExited {
        server: &'static str,
        netns: String,
        status: String,
        log: String,
    },
    #[error("{server} in {netns} did not bind UDP port {port} within {waited:?}: {log}")]
    DnsmasqNotReady {
        server: &'static str,
        netns: String,
        port: u16,
        waited: Duration,
        log: String,
    },
    #[error("{what} is not possible in this lab: {why}")]
    Unsupported { what: String, why: &'static str },
    #[error("relay for {netns}: {reason}")]
    Relay { netns: String, reason: String },
    #[error("the pod's DHCP server: {reason}")]
    Dhcpd { reason: String },
    #[error("the pod's processes (unshare, sleep) did not start: {reason}")]
    Pause { reason: String },
    #[error("teardown of lab {lab} incomplete: {details}; once this process exits, lab::clean_stale() (or `ip netns del`) removes the rest")]
    Teardown { lab: String, details: String },
}

/// Per-process lab counter, for the subnets.
static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// A running lab: two namespaces, two taps, a relay thread and a DHCP
/// server (dnsmasq or udhcpd, or a pod's).
pub struct Lab {
    name: String,
    /// The host namespace's name under /run/netns, or for a pod held only
    /// by a process, the path of its namespace file.
    host_ns: String,
    host_path: PathBuf,
    guest_ns: String,
    subnet: Ipv4Addr,
    subnet6: Ipv6Addr,
    opts: LabOptions,
    shape: Host,
    started: Instant,
    dir: PathBuf,
    relay: Option<relay::RelayHandle>,
    server: Option<Child>,
    /// A pod's DHCP server (instead of `server`).
    dhcpd: Option<dhcpd::Dhcpd>,
    /// A pod's process holding its UTS namespace (and, for
    /// [`PodNetns::Process`], its network namespace).
    pause: Option<Child>,
    runs: AtomicU32,
    /// Removed in this order by the teardown.
    host: Option<Netns>,
    guest: Option<Netns>,
    sandbox: Option<Sandbox>,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("name", &self.name)
            .field("subnet", &self.subnet)
            .field("opts", &self.opts)
            .field("host", &self.shape)
            .field("host_netns", &self.host_ns)
            .field("server_pid", &self.dnsmasq_pid())
            .finish_non_exhaustive()
    }
}

impl Lab {
    /// Builds the whole topology, starts dnsmasq and the relay; ready for
    /// clients when it returns. On error, whatever was built is torn down.
    pub fn create(opts: LabOptions) -> Result<Lab, LabError> {
        Lab::with_host(opts, Host::Libvirt)
    }

    /// [`Lab::create`] with this host side: a libvirt host, or a KubeVirt
    /// pod.
    pub fn with_host(opts: LabOptions, shape: Host) -> Result<Lab, LabError> {
        if !is_root() {
            return Err(LabError::NotRoot);
        }
        find_tool("ip", "iproute2")?;
        match (&shape, opts.server) {
            (Host::Pod(_), _) => drop(find_tool("unshare", "util-linux")?),
            (Host::Libvirt, Server::Dnsmasq) => drop(find_tool("dnsmasq", "dnsmasq-base")?),
            (Host::Libvirt, Server::Udhcpd) => drop(find_tool("busybox", "busybox")?),
        }
        if opts.dhcpv6 && matches!(shape, Host::Pod(_)) {
            return Err(LabError::Unsupported {
                what: "DHCPv6 in a pod".into(),
                why: "the pod's server (virt-launcher's) is DHCPv4 only here",
            });
        }
        if opts.dhcpv6 && opts.server != Server::Dnsmasq {
            return Err(LabError::Unsupported {
                what: "DHCPv6 with udhcpd".into(),
                why: "udhcpd serves DHCPv4 only; use dnsmasq",
            });
        }

        let sandbox = Sandbox::create(&PLACE)?;
        let id = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let name = sandbox.name().to_owned();
        let mut lab = Lab {
            host_ns: format!("{name}-h"),
            host_path: netns::path(&format!("{name}-h")),
            guest_ns: format!("{name}-g"),
            dir: sandbox.dir().to_path_buf(),
            name,
            subnet: Ipv4Addr::new(10, 199, (id % 250) as u8, 0),
            subnet6: Ipv6Addr::new(0xfd00, 0xdfc, (id % 250) as u16, 0, 0, 0, 0, 0),
            opts,
            shape,
            started: Instant::now(),
            relay: None,
            server: None,
            dhcpd: None,
            pause: None,
            runs: AtomicU32::new(0),
            host: None,
            guest: None,
            sandbox: Some(sandbox),
        };
        // `lab` tears down on any `?` below.
        lab.build()?;
        log::info!(
            "lab {} up: {:?}, {:?}, subnet {}/24, netns {} / {}",
            lab.name,
            opts,
            lab.shape,
            lab.subnet,
            lab.host_ns,
            lab.guest_ns
        );
        Ok(lab)
    }

    fn build(&mut self) -> Result<(), LabError> {
        clients::write_noop_script(&self.dir)?;
        clients::write_configure_script(&self.dir)?;
        let Some(sb) = &self.sandbox else {
            unreachable!("a lab being built has its sandbox")
        };
        let guest = sb.netns("g")?;
        debug_assert_eq!(guest.name(), &*self.guest_ns);
        match self.shape.clone() {
            Host::Libvirt => {
                let host = sb.netns("h")?;
                debug_assert_eq!(host.name(), &*self.host_ns);
                self.host = Some(host);
            }
            Host::Pod(pod) => {
                if pod.netns == PodNetns::Pinned {
                    let host = sb.netns_named(&format!("cni-{}", uuid()?))?;
                    self.host_ns = host.name().to_owned();
                    self.host_path = host.path().to_path_buf();
                    self.host = Some(host);
                }
                self.start_pause(&pod)?;
            }
        }
        if self.opts.dhcpv6 {
            // No duplicate address detection: link-local addresses (which
            // DHCPv6 runs over) and the bridge's address are usable at once,
            // as on a host that has been up for a while.
            for ns in [&self.host_path, guest.path()] {
                netns::in_netns(ns, || no_dad(&["all", "default"]))??;
            }
        }
        let guest_path = guest.path().to_path_buf();
        self.guest = Some(guest);
        let (bridge, tap) = (self.bridge(), self.tap_name());
        self.relay = Some(relay::start(relay::RelayConfig {
            host_ns: self.host_path.clone(),
            guest_ns: guest_path.clone(),
            host_tap: tap.into(),
            guest_tap: GUEST_TAP.into(),
            offload: self.opts.offload,
            guest: self.opts.guest,
            start: self.started,
        })?);

        let cidr = format!("{}/24", self.gateway());
        self.host_ip(&["link", "add", bridge, "type", "bridge", "stp_state", "0"])?;
        self.host_ip(&["addr", "add", &cidr, "dev", bridge])?;
        if self.opts.dhcpv6 {
            // The taps existed before DAD was turned off by default.
            netns::in_netns(&self.host_path, || no_dad(&[tap]))??;
            netns::in_netns(&guest_path, || no_dad(&[GUEST_TAP]))??;
            let cidr6 = format!("{}/64", self.gateway6());
            self.host_ip(&["addr", "add", &cidr6, "dev", bridge, "nodad"])?;
        }
        self.host_ip(&["link", "set", tap, "master", bridge])?;
        self.host_ip(&["link", "set", tap, "up"])?;
        if matches!(self.shape, Host::Pod(_)) {
            self.host_ip(&["link", "add", POD_NIC, "type", "veth", "peer", "name", POD_ETH])?;
            self.host_ip(&["link", "set", POD_NIC, "master", bridge])?;
            self.host_ip(&["link", "set", POD_NIC, "up"])?;
            self.host_ip(&["link", "set", POD_ETH, "up"])?;
        }
        self.host_ip(&["link", "set", bridge, "up"])?;
        netns::ip_in(&self.guest_ns, &["link", "set", GUEST_TAP, "up"])?;

        self.start_server()
    }

    /// Starts the pod's "pause" process: `sleep` in a UTS namespace of its
    /// own with the VMI's host name, in the pinned namespace or in one of
    /// its own. It dies with the thread that made it (PR_SET_PDEATHSIG).
    fn start_pause(&mut self, pod: &Pod) -> Result<(), LabError> {
        let unshare = find_tool("unshare", "util-linux")?;
        let ip = find_tool("ip", "iproute2")?;
        let script = "[ -z \"$2\" ] || \"$2\" link set lo up && hostname \"$1\" && exec sleep 100000";
        let mut cmd = match pod.netns {
            PodNetns::Pinned => {
                let mut c = netns::command_in(&self.host_path, &unshare);
                c.args(["--uts", "sh", "-c", script, "pause", &pod.vmi, ""]);
                c
            }
            PodNetns::Process => {
                let mut c = Command::new(&unshare);
                c.args(["--net", "--uts", "sh", "-c", script, "pause", &pod.vmi])
                    .arg(&ip);
                c
            }
        };
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        // SAFETY: prctl(2) is async-signal-safe and touches no memory of
        // the parent.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = process::spawn(&mut cmd)?;
        let pid = child.id();
        // Ready once `sleep` runs: the namespaces and the name are set.
        let started = poll(Duration::from_secs(10), Duration::from_millis(5), || {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
                || child.try_wait().ok().flatten().is_some()
        });
        let running = child.try_wait().ok().flatten().is_none();
        if started.is_none() || !running {
            let _ = process::stop(&mut child, Duration::from_secs(1));
            return Err(LabError::Pause {
                reason: format!("pid {pid} did not reach `sleep` (exited: {})", !running),
            });
        }
        if pod.netns == PodNetns::Process {
            self.host_path = PathBuf::from(format!("/proc/{pid}/ns/net"));
            self.host_ns = self.host_path.display().to_string();
        }
        self.pause = Some(child);
        Ok(())
    }

    /// Stops the DHCP server (SIGTERM; it sends nothing on its way out):
    /// bound guests keep their leases until they run out.
    pub fn stop_server(&mut self) -> Result<(), LabError> {
        if let Some(mut child) = self.server.take() {
            process::stop(&mut child, Duration::from_secs(2))
                .map_err(KitError::sys("stop the DHCP server"))?;
        }
        if let Some(mut server) = self.dhcpd.take() {
            server.stop().map_err(|reason| LabError::Dhcpd { reason })?;
        }
        Ok(())
    }

    /// Starts the DHCP server again after [`Lab::stop_server`] (its leases
    /// file kept); a no-op while it runs.
    pub fn start_server(&mut self) -> Result<(), LabError> {
        match self.shape {
            Host::Libvirt if self.server.is_none() => {
                self.server = Some(clients::start_server(self)?);
            }
            Host::Pod(_) if self.dhcpd.is_none() => {
                let o = self.subnet.octets();
                self.dhcpd = Some(dhcpd::Dhcpd::start(
                    &self.host_path,
                    self.bridge(),
                    dhcpd::Pool {
                        server: self.gateway(),
                        first: Ipv4Addr::new(o[0], o[1], o[2], 50),
                    },
                )?);
            }
            _ => {}
        }
        Ok(())
    }

    /// `ip ARGS` in the host namespace (a pod's too).
    pub fn host_ip(&self, args: &[&str]) -> Result<(), LabError> {
        Ok(netns::ip_at(&self.host_path, args)?)
    }

    /// Name of the host namespace (under `/run/netns`); for a pod held
    /// only by a process, the path of its namespace file
    /// (`/proc/PID/ns/net`).
    pub fn host_netns(&self) -> &str {
        &self.host_ns
    }

    /// The host side: a libvirt host or a KubeVirt pod.
    pub fn host(&self) -> &Host {
        &self.shape
    }

    /// The pid of a pod's "pause" process (its host name is the VMI's).
    pub fn pause_pid(&self) -> Option<u32> {
        self.pause.as_ref().map(Child::id)
    }

    /// The bridge the host tap hangs on: `br0`, or a pod's `k6t-eth0`.
    pub fn bridge(&self) -> &'static str {
        match self.shape {
            Host::Libvirt => BRIDGE,
            Host::Pod(_) => POD_BRIDGE,
        }
    }

    /// What a pod's DHCP server answered so far.
    pub fn dhcpd_stats(&self) -> Option<DhcpdStats> {
        self.dhcpd.as_ref().map(dhcpd::Dhcpd::stats)
    }

    /// Name of the guest namespace (under `/run/netns`).
    pub fn guest_netns(&self) -> &str {
        &self.guest_ns
    }

    /// `/run/netns/<host_netns>`, or a pod's `/proc/PID/ns/net`.
    pub fn host_netns_path(&self) -> PathBuf {
        self.host_path.clone()
    }

    /// `/run/netns/<guest_netns>`.
    pub fn guest_netns_path(&self) -> PathBuf {
        netns::path(&self.guest_ns)
    }

    /// The host tap (`vnet0`, a pod's `tap0`, in the host namespace):
    /// where a fix attaches.
    pub fn tap_name(&self) -> &'static str {
        match self.shape {
            Host::Libvirt => HOST_TAP,
            Host::Pod(_) => POD_TAP,
        }
    }

    /// The lab's /24, e.g. `10.199.7.0`. The bridge is `.1`, leases `.50-.150`.
    pub fn subnet(&self) -> Ipv4Addr {
        self.subnet
    }

    /// The bridge address (`.1`), which is also dnsmasq's address.
    pub fn gateway(&self) -> Ipv4Addr {
        let o = self.subnet.octets();
        Ipv4Addr::new(o[0], o[1], o[2], 1)
    }

    /// The lab's IPv6 /64 (`fd00:dfc:N::`), used with
    /// [`LabOptions::dhcpv6`]: the bridge is `::1`, leases `::100-::1ff`.
    pub fn subnet6(&self) -> Ipv6Addr {
        self.subnet6
    }

    /// The bridge's IPv6 address (`::1`) with [`LabOptions::dhcpv6`].
    pub fn gateway6(&self) -> Ipv6Addr {
        self.v6_host(1)
    }

    /// The address `::<last>` of the lab's /64.
    pub(crate) fn v6_host(&self, last: u16) -> Ipv6Addr {
        let mut s = self.subnet6.segments();
        s[7] = last;
        Ipv6Addr::from(s)
    }

    /// Lab name `dfx-<pid>-<n>` (the namespaces add `-h` / `-g`).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn options(&self) -> LabOptions {
        self.opts
    }

    /// Per-lab work directory (`/run/dhcpfix-lab/<name>`): dnsmasq log,
    /// leases and pid file, client config/lease files.
    pub fn work_dir(&self) -> &Path {
        &self.dir
    }

    /// Pid of the lab's DHCP server (dnsmasq, or udhcpd), while it runs.
    pub fn dnsmasq_pid(&self) -> Option<u32> {
        self.server.as_ref().map(Child::id)
    }

    /// dnsmasq's log so far (`--log-dhcp` output); udhcpd's stderr.
    pub fn dnsmasq_log(&self) -> String {
        let file = match self.opts.server {
            Server::Dnsmasq => "dnsmasq.log",
            Server::Udhcpd => "udhcpd.stderr",
        };
        fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }

    /// The DHCP messages that crossed the relay so far, in order: what the
    /// guest sent and what reached it, with whether its checksum was good.
    pub fn dhcp_frames(&self) -> Vec<DhcpFrame> {
        self.relay
            .as_ref()
            .map(relay::RelayHandle::dhcp_frames)
            .unwrap_or_default()
    }

    /// UDP datagrams the guest's kernel dropped for a bad checksum so far:
    /// `Udp: InCsumErrors` plus `Udp6InCsumErrors` of the guest namespace
    /// (Linux 6.18 counts UDPv6 checksum errors under the former).
    pub fn guest_udp_csum_errors(&self) -> Result<u64, LabError> {
        let (snmp, snmp6) = netns::in_netns(&self.guest_netns_path(), || {
            (
                fs::read_to_string("/proc/thread-self/net/snmp"),
                fs::read_to_string("/proc/thread-self/net/snmp6"),
            )
        })?;
        let snmp = snmp.map_err(KitError::io("read", "/proc/thread-self/net/snmp"))?;
        let snmp6 = snmp6.map_err(KitError::io("read", "/proc/thread-self/net/snmp6"))?;
        Ok(snmp_counter(&snmp, "Udp:", "InCsumErrors") + snmp6_counter(&snmp6, "Udp6InCsumErrors"))
    }

    /// Since when the lab runs: [`DhcpFrame::at`] counts from it.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Frame counters of the relay.
    pub fn relay_stats(&self) -> RelayStats {
        self.relay
            .as_ref()
            .map(relay::RelayHandle::stats)
            .unwrap_or_default()
    }

    pub(crate) fn next_run(&self) -> u32 {
        self.runs.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs ISC dhclient once in the guest namespace (no-op script, fresh
    /// lease file) and kills it when it is bound or at `timeout`.
    /// Do not run two clients of one lab at the same time.
    pub fn run_dhclient(&self, timeout: Duration) -> Result<ClientOutcome, LabError> {
        clients::run_dhclient(self, timeout)
    }

    /// Starts ISC dhclient in the guest namespace and leaves it running:
    /// it binds, renews at T1, rebinds at T2 and starts over when its lease
    /// runs out, configuring what it gets on the guest's interface, until
    /// [`Client::stop`] (or drop) kills it. Its script reports each event
    /// ([`Client::wait_event`]).
    pub fn start_dhclient(&self, opts: &Dhclient) -> Result<Client, LabError> {
        clients::start_dhclient(self, opts)
    }

    /// Runs `busybox udhcpc -f -q -n` once in the guest namespace (no-op
    /// script); killed at `timeout` if still running.
    pub fn run_udhcpc(&self, timeout: Duration) -> Result<ClientOutcome, LabError> {
        clients::run_udhcpc(self, timeout)
    }

    /// A misbehaving guest: sends `count` DHCPDISCOVERs from random MACs
    /// with random transaction ids (seeded by `seed`) out of the guest's
    /// interface, in bursts the relay keeps up with; returns how many were
    /// sent. They enter the host through the tap, as the real guest's do.
    pub fn flood_discovers(&self, count: u64, seed: u64) -> Result<u64, LabError> {
        flood::flood_discovers(self, count, seed)
    }

    /// A command that runs in the host namespace (see
    /// [`netns::command_in`]: it keeps the caller's mount namespace, so
    /// bpffs mounts stay visible and persist; `/sys/class/net` in the child
    /// still shows the caller's namespace, netlink and ioctls see the lab).
    pub fn host_command(&self, program: impl AsRef<OsStr>) -> Command {
        netns::command_in(&self.host_netns_path(), program)
    }

    /// Like [`Lab::host_command`], for the guest namespace.
    pub fn guest_command(&self, program: impl AsRef<OsStr>) -> Command {
        netns::command_in(&self.guest_netns_path(), program)
    }

    /// A pin directory for dhcpfix inside the lab's work directory; the lab
    /// unmounts whatever bpffs is mounted there when it is torn down.
    pub fn pin_dir(&self) -> PathBuf {
        self.dir.join("bpf")
    }

    /// Explicit teardown; `Drop` does the same and logs errors.
    pub fn destroy(mut self) -> Result<(), LabError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), LabError> {
        let Some(sandbox) = self.sandbox.take() else {
            return Ok(());
        };
        let mut problems = Vec::new();
        if let Some(mut relay) = self.relay.take() {
            if let Err(e) = relay.stop() {
                problems.push(e);
            }
        }
        if let Some(mut child) = self.server.take() {
            if let Err(e) = process::stop(&mut child, Duration::from_secs(2)) {
                problems.push(format!("stop the DHCP server: {e}"));
            }
        }
        if let Some(mut server) = self.dhcpd.take() {
            if let Err(e) = server.stop() {
                problems.push(e);
            }
        }
        if let Some(mut child) = self.pause.take() {
            if let Err(e) = process::stop(&mut child, Duration::from_secs(2)) {
                problems.push(format!("stop the pod's sleep: {e}"));
            }
        }
        // Every process left in the namespaces is killed with them.
        for ns in [self.host.take(), self.guest.take()].into_iter().flatten() {
            if let Err(e) = ns.remove() {
                problems.push(e.to_string());
            }
        }
        if let Err(e) = sandbox.remove() {
            problems.push(e.to_string());
        }
        if problems.is_empty() {
            log::info!("lab {} torn down", self.name);
            Ok(())
        } else {
            Err(LabError::Teardown {
                lab: self.name.clone(),
                details: problems.join("; "),
            })
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            log::error!("{e}");
        }
    }
}

/// A random UUID (version 4), from the kernel.
fn uuid() -> Result<String, KitError> {
    let path = "/proc/sys/kernel/random/uuid";
    Ok(fs::read_to_string(path)
        .map_err(KitError::io("read", path))?
        .trim()
        .to_owned())
}

/// Removes leftovers of labs whose creating process is dead (the pid is in
/// the names): processes in their namespaces (dnsmasq, clients), the
/// namespaces, and work directories. Returns the number of labs removed.
/// Labs of live processes, including this one, are never touched.
pub fn clean_stale() -> Result<usize, LabError> {
    Ok(crate::kit::sandbox::clean_stale(&PLACE)?)
}

/// Installs SIGINT/SIGTERM handling that tears down all live labs (and
/// other sandboxes) of this process, then lets the signal end the process
/// as it would have. Idempotent; [`Lab::create`] installs it too. See
/// [`crate::kit::sandbox::install_cleanup`].
pub fn install_interrupt_cleanup() -> Result<(), LabError> {
    Ok(crate::kit::sandbox::install_cleanup()?)
}

/// Turns IPv6 duplicate address detection off for `interfaces` (or `all`,
/// `default`) of the calling thread's network namespace.
fn no_dad(interfaces: &[&str]) -> Result<(), LabError> {
    for iface in interfaces {
        let path = format!("/proc/sys/net/ipv6/conf/{iface}/accept_dad");
        fs::write(&path, "0").map_err(KitError::io("write", &path))?;
    }
    Ok(())
}

/// A counter of `/proc/net/snmp`: a line of names after `prefix`, then a
/// line of values.
fn snmp_counter(text: &str, prefix: &str, name: &str) -> u64 {
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// A counter of `/proc/net/snmp6`: one `name value` per line.
fn snmp6_counter(text: &str, name: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_once(char::is_whitespace))
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_snmp_counters() {
        let snmp = "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors\n\
                    Udp: 5 0 4 3 0 0 4\n";
        assert_eq!(super::snmp_counter(snmp, "Udp:", "InCsumErrors"), 4);
        assert_eq!(super::snmp_counter(snmp, "Udp:", "Nothing"), 0);
        let snmp6 = "Udp6InErrors                    \t2\nUdp6InCsumErrors                \t3\n";
        assert_eq!(super::snmp6_counter(snmp6, "Udp6InCsumErrors"), 3);
    }
}
