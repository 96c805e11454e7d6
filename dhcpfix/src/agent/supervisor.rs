//! The agent's loop: one tokio task waiting on signals, the link-event
//! socket, the namespace watcher, the ring buffer of fill events and a
//! tick; the HTTP endpoint runs beside it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    future::pending,
    os::fd::AsFd,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use std::os::fd::AsRawFd;

use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
    task::{block_in_place, JoinHandle},
};

use super::{
    config::{MetricsAddr, Settings},
    events::{EventStream, MAX_PER_DRAIN},
    guests::GuestWatch,
    http::{self, Health},
    namespaces::{self, Found, Select, Watcher},
    reconcile::Reconciler,
    AgentError,
};
use crate::{
    attach, leases,
    metrics::{self, Unattached},
    netdev::{self, LinkEvent as Event, LinkMonitor as Monitor},
    netns::{self, Netns, NetnsError},
    pins::{self, PinDir},
    program,
};

/// How often the loop turns without events: heartbeat, retries, the scan of
/// `/proc` for namespaces only processes hold.
const TICK: Duration = Duration::from_secs(2);
/// How often the guests' DHCP states are read for the log. States change
/// in seconds (a client retransmits every few); a lease's end is known
/// ahead of time.
const GUEST_CHECK: Duration = Duration::from_secs(4);
/// Datagrams of link events read per wake-up.
const MAX_DATAGRAMS: usize = 64;
/// A namespace file that is not a namespace yet (`ip netns add` creates the
/// file, then mounts the namespace on it) is tried again this often...
const RETRY_EVERY: Duration = Duration::from_millis(50);
/// ...this many times.
const RETRIES: u32 = 40;
/// How long the remains of a namespace whose file went away are looked at
/// again, waiting for its links to die with it.
const DYING_FOR: Duration = Duration::from_secs(60);
/// How long after a namespace was found its pod's host name is looked for
/// (a CRI runtime starts a pod's processes seconds after it pinned its
/// namespace); past that it is taken to be no pod's.
const POD_LABEL_FOR: Duration = Duration::from_secs(60);

/// One network namespace the agent covers.
struct Space {
    netns: Netns,
    /// The host name of its processes where it is their own (a pod's).
    pod: Option<String>,
    /// Until when a pod's host name is looked for ([`POD_LABEL_FOR`]).
    label_until: Instant,
    reconciler: Reconciler,
}

/// What the HTTP task needs to know of the namespaces.
#[derive(Default)]
struct Shared {
    namespaces: Vec<Netns>,
    pods: HashMap<u64, String>,
    unattached: Vec<Unattached>,
}

struct Agent {
    pins: PinDir,
    settings: Settings,
    /// Link events of every namespace with an id. Read here (not only when
    /// the loop sees it readable) so that the events queued before a new
    /// namespace gets an id are handled first: see [`Agent::add`].
    monitor: Monitor,
    own_id: (u64, u64),
    own_cookie: u64,
    host: Option<u64>,
    spaces: BTreeMap<u64, Space>,
    /// The namespace (cookie) each id stands for, as of the last event
    /// read. A namespace whose file went away keeps its entry until the
    /// kernel reports it deleted.
    nsids: HashMap<i32, u64>,
    ids: HashMap<(u64, u64), u64>,
    /// Events read while covering a namespace named namespaces not covered
    /// yet: look again.
    look_again: bool,
    /// Found, not enterable yet: (what, tries left, next try).
    pending: BTreeMap<(u64, u64), (Found, u32, Instant)>,
    /// Namespaces whose file went away while their links were still
    /// hooked, and until when their remains are looked at again (each
    /// tick): the kernel's report of their end may have been lost.
    dying: BTreeMap<u64, Instant>,
    shared: Arc<RwLock<Shared>>,
    next_pass: Instant,
    next_proc_scan: Instant,
    next_guest_check: Instant,
    guests: GuestWatch,
}

impl Agent {
    fn new(
        pins: PinDir,
        settings: Settings,
        monitor: Monitor,
        shared: Arc<RwLock<Shared>>,
    ) -> Result<Self, AgentError> {
        let own = Netns::current()?;
        let own_id = own.id();
        let own_cookie = own.cookie();
        let reconciler = Reconciler::new(
            pins.clone(),
            own.clone(),
            settings.patterns.clone(),
            settings.attach.clone(),
        );
        let mut spaces = BTreeMap::new();
        spaces.insert(
            own_cookie,
            Space {
                netns: own,
                pod: None,
                label_until: Instant::now(),
                reconciler,
            },
        );
        let now = Instant::now();
        Ok(Self {
            next_pass: now + settings.resync,
            pins,
            settings,
            monitor,
            own_id,
            own_cookie,
            host: netns::host_cookie(),
            spaces,
            nsids: HashMap::new(),
            ids: HashMap::from([(own_id, own_cookie)]),
            look_again: false,
            pending: BTreeMap::new(),
            dying: BTreeMap::new(),
            shared,
            next_proc_scan: now + TICK,
            next_guest_check: now,
            guests: GuestWatch::default(),
        })
    }

    /// Looks for namespaces not covered yet and covers them; with
    /// `processes`, also those only processes hold.
    fn discover(&mut self, processes: bool) {
        // Covering one reads the events queued so far, which may name
        // others: a few more looks at most.
        for _ in 0..3 {
            self.look_again = false;
            let found = namespaces::find(&self.settings.netns, self.own_id, processes);
            for (id, f) in found {
                if self.ids.contains_key(&id) || self.pending.contains_key(&id) {
                    continue;
                }
                self.try_add(f, RETRIES);
            }
            if !self.look_again {
                break;
            }
        }
        self.publish();
    }

    fn try_add(&mut self, found: Found, tries: u32) {
        match self.add(&found) {
            Ok(()) => {}
            // Not mounted there yet (`ip netns add` creates the file, then
            // mounts the namespace on it). One that is gone is not waited
            // for: the kernel gives its inode number to the next namespace
            // at once, which would be taken for it meanwhile.
            Err(AgentError::Netns(e)) if tries > 0 && matches!(*e, NetnsError::NotNetns(_)) => {
                self.pending
                    .insert(found.id, (found, tries - 1, Instant::now() + RETRY_EVERY));
            }
            Err(e) => log::debug!("network namespace {}: {e}", found.path.display()),
        }
    }

    fn add(&mut self, found: &Found) -> Result<(), AgentError> {
        let shown = found
            .name
            .clone()
            .unwrap_or_else(|| found.path.display().to_string());
        let netns = Netns::open_path(&found.path, shown)?;
        let cookie = netns.cookie();
        self.ids.insert(found.id, cookie);
        if self.spaces.contains_key(&cookie) {
            return Ok(());
        }
        self.dying.remove(&cookie);
        let nsid = match netns.open_file()? {
            Some(fd) => match netdev::rtnetlink::nsid_of(fd.as_fd()) {
                Ok(id) => Some(id),
                Err(e) => {
                    log::warn!("{netns}: no namespace id ({e}); its links are followed by full passes only");
                    None
                }
            },
            None => None,
        };
        if let Some(id) = nsid {
            // The kernel reuses the id of a deleted namespace at once, and
            // the events queued before this one got it (its deletion among
            // them) are about the namespace that had it before: handle
            // those first, as they read.
            self.catch_up(id);
            self.nsids.insert(id, cookie);
        }

        let pod = namespaces::pod_hostname(found.id);
        log::info!(
            "covering {netns} (cookie {cookie}{})",
            pod.as_ref().map(|p| format!(", pod {p}")).unwrap_or_default()
        );
        let reconciler = Reconciler::new(
            self.pins.clone(),
            netns.clone(),
            self.settings.patterns.clone(),
            self.settings.attach.clone(),
        );
        self.spaces.insert(
            cookie,
            Space {
                netns,
                pod,
                label_until: Instant::now() + POD_LABEL_FOR,
                reconciler,
            },
        );
        self.full(cookie);
        Ok(())
    }

    /// A namespace is gone: forget it and what its interfaces left. The
    /// kernel reports a namespace deleted (`dismantled`) before it
    /// unregisters its devices, so their links may still be hooked: all of
    /// them go. A namespace whose file went away may live on (held by
    /// another process): only the links of deleted interfaces go, and its
    /// id stays known until the kernel reports it deleted.
    fn remove(&mut self, cookie: u64, why: &str, dismantled: bool) {
        let space = self.spaces.remove(&cookie);
        if space.is_none() && !dismantled {
            return;
        }
        if dismantled {
            self.nsids.retain(|_, c| *c != cookie);
            self.dying.remove(&cookie);
        }
        self.ids.retain(|_, c| *c != cookie);
        let shown = space
            .as_ref()
            .map_or_else(|| format!("network namespace {cookie}"), |s| s.netns.to_string());
        let lock = self.settings.attach.lock_timeout;
        let forgotten = if dismantled {
            attach::forget_namespace(&self.pins, cookie, lock)
        } else {
            attach::remove_dead(&self.pins, &[], Some(cookie), lock)
        };
        match forgotten {
            Ok(gone) => {
                for g in gone.iter().filter(|g| g.had_link) {
                    log::info!("detached {} in {shown}: {why}", g.name);
                }
                if space.is_some() {
                    log::info!("{shown} is gone ({why}); removed what it left");
                }
            }
            Err(e) => log::error!("{shown}: {e}"),
        }
        if !dismantled && attach::has_remains(&self.pins, cookie).unwrap_or(false) {
            self.dying.insert(cookie, Instant::now() + DYING_FOR);
        }
        self.publish();
    }

    /// Removes the remains of namespaces whose file went away once their
    /// links are dead; stops looking when nothing is left, or at the
    /// deadline (the namespace lives on, held by a process not found).
    fn bury(&mut self) {
        let now = Instant::now();
        let lock = self.settings.attach.lock_timeout;
        let dying: Vec<(u64, Instant)> = self.dying.iter().map(|(c, t)| (*c, *t)).collect();
        for (cookie, until) in dying {
            match attach::remove_dead(&self.pins, &[], Some(cookie), lock) {
                Ok(gone) => {
                    for g in gone.iter().filter(|g| g.had_link) {
                        log::info!("detached {} in network namespace {cookie}: it is gone", g.name);
                    }
                }
                Err(e) => log::error!("network namespace {cookie}: {e}"),
            }
            if now >= until || !attach::has_remains(&self.pins, cookie).unwrap_or(true) {
                self.dying.remove(&cookie);
            }
        }
    }

    /// Reads and handles the link events queued so far (up to
    /// `MAX_DATAGRAMS` datagrams); whether more may be queued.
    fn read_events(&mut self) -> Result<bool, AgentError> {
        let (batch, more) = self.monitor.drain(MAX_DATAGRAMS)?;
        self.handle(batch);
        Ok(more)
    }

    /// Handles every event queued so far, without looking for namespaces
    /// (the caller is covering one, which gets id `claim`): see
    /// [`Agent::add`].
    fn catch_up(&mut self, claim: i32) {
        loop {
            match self.monitor.drain(MAX_DATAGRAMS) {
                Ok((mut batch, more)) => {
                    // Its own id's announcement names no other namespace.
                    batch.retain(|e| *e != Event::NewNsid(claim));
                    self.look_again |= self.apply(batch);
                    if !more {
                        return;
                    }
                }
                Err(e) => {
                    log::warn!("{e}");
                    return;
                }
            }
        }
    }

    /// A full pass over one namespace's interfaces.
    fn full(&mut self, cookie: u64) {
        let Some(space) = self.spaces.get_mut(&cookie) else {
            return;
        };
        match space.netns.run(netdev::links) {
            Ok(Ok(links)) => {
                if let Err(e) = space.reconciler.full(&links) {
                    log::error!("{}: {e}", space.netns);
                }
            }
            Ok(Err(e)) => log::error!("{}: {e}", space.netns),
            // Unmounted (`ip netns del` unmounts, then unlinks) or gone.
            Err(NetnsError::Gone(_) | NetnsError::NotNetns(_)) if cookie != self.own_cookie => {
                self.remove(cookie, "its namespace file is gone", false)
            }
            Err(e) => log::error!("{e}"),
        }
    }

    fn full_all(&mut self) {
        let cookies: Vec<u64> = self.spaces.keys().copied().collect();
        for cookie in cookies {
            self.full(cookie);
        }
        self.publish();
    }

    fn space_of(&mut self, nsid: Option<i32>) -> Option<&mut Space> {
        let cookie = match nsid {
            None => self.own_cookie,
            Some(id) => *self.nsids.get(&id)?,
        };
        self.spaces.get_mut(&cookie)
    }

    fn handle(&mut self, events: Vec<Event>) {
        if self.apply(events) && !matches!(self.settings.netns, Select::Own) {
            self.discover(true);
        }
        self.publish();
    }

    /// Handles link events, in order; whether they name namespaces not
    /// covered (yet).
    fn apply(&mut self, events: Vec<Event>) -> bool {
        let mut lost = false;
        let mut look = false;
        for event in events {
            match event {
                Event::Changed { nsid, link } => match self.space_of(nsid) {
                    Some(space) => space.reconciler.changed(&link),
                    None => look = true,
                },
                Event::Deleted { nsid, link } => {
                    if let Some(space) = self.space_of(nsid) {
                        space.reconciler.deleted(&link);
                    }
                }
                Event::NewNsid(id) => look |= !self.nsids.contains_key(&id),
                Event::NamespaceGone(id) => {
                    if let Some(cookie) = self.nsids.get(&id).copied() {
                        self.remove(cookie, "the kernel reported it deleted", true);
                    }
                }
                Event::Lost => lost = true,
            }
        }
        if lost {
            log::warn!("the kernel dropped link events; re-reading every interface");
            self.full_all();
        }
        look
    }

    /// When the next namespace file not mounted yet is looked at again.
    fn next_retry(&self) -> Option<Instant> {
        self.pending.values().map(|(_, _, at)| *at).min()
    }

    /// Looks again at the namespace files that were not mounted yet.
    fn retry_pending(&mut self) {
        let now = Instant::now();
        let due: Vec<(u64, u64)> = self
            .pending
            .iter()
            .filter(|(_, (_, _, at))| *at <= now)
            .map(|(id, _)| *id)
            .collect();
        if due.is_empty() {
            return;
        }
        for id in due {
            if let Some((found, tries, _)) = self.pending.remove(&id) {
                self.try_add(found, tries);
            }
        }
        self.publish();
    }

    fn tick(&mut self) {
        let now = Instant::now();
        self.retry_pending();
        self.bury();
        if self.settings.netns.scans_processes() && now >= self.next_proc_scan {
            self.next_proc_scan = now + TICK;
            self.discover(true);
        }
        self.label_pods();
        if now >= self.next_pass {
            self.next_pass = now + self.settings.resync;
            self.full_all();
        }
        if now >= self.next_guest_check {
            self.next_guest_check = now + GUEST_CHECK;
            self.check_guests();
        }
    }

    /// Logs guests entering trouble (and leaving it).
    fn check_guests(&mut self) {
        let namespaces: Vec<Netns> = self.spaces.values().map(|s| s.netns.clone()).collect();
        match leases::collect(&self.pins, &namespaces, &[]) {
            Ok(guests) => {
                for (level, line) in self.guests.check(&guests, self.host) {
                    log::log!(level, "{line}");
                }
            }
            Err(e) => log::debug!("reading the guests' DHCP states: {e}"),
        }
    }

    /// Names the pods of namespaces found before their processes started
    /// (a CRI runtime pins a pod's namespace first, then starts the pod's
    /// processes in it).
    fn label_pods(&mut self) {
        let now = Instant::now();
        let unlabelled: BTreeSet<(u64, u64)> = self
            .spaces
            .values()
            .filter(|s| s.pod.is_none() && now < s.label_until)
            .map(|s| s.netns.id())
            .collect();
        if unlabelled.is_empty() {
            return;
        }
        let found = namespaces::pod_hostnames(&unlabelled);
        if found.is_empty() {
            return;
        }
        for space in self.spaces.values_mut() {
            if let Some(pod) = found.get(&space.netns.id()) {
                log::info!("{} belongs to pod {pod}", space.netns);
                space.pod = Some(pod.clone());
            }
        }
        self.publish();
    }

    /// Tells the HTTP task what it labels metrics with.
    fn publish(&self) {
        let mut shared = self.shared.write().unwrap_or_else(|e| e.into_inner());
        shared.namespaces = self.spaces.values().map(|s| s.netns.clone()).collect();
        shared.pods = self
            .spaces
            .iter()
            .filter_map(|(c, s)| s.pod.clone().map(|p| (*c, p)))
            .collect();
        shared.unattached = self
            .spaces
            .values()
            .flat_map(|s| {
                let label = s.netns.info().label(self.host);
                s.reconciler.failed().map(move |(name, _)| Unattached {
                    interface: name.to_owned(),
                    netns: label.clone(),
                    reason: "attach_failed",
                })
            })
            .collect();
    }

    /// Follows a pin directory mounted anew (the old one was unmounted).
    fn set_pins(&mut self, pins: PinDir) {
        self.pins = pins.clone();
        for space in self.spaces.values_mut() {
            space.reconciler.set_pins(pins.clone());
        }
    }

    fn name_of(&self, key: &dhcpfix_common::key::IfaceKey) -> String {
        let Some(space) = self.spaces.get(&key.netns) else {
            return format!("if{} (netns {})", key.ifindex, key.netns);
        };
        let name = space
            .reconciler
            .name_of(key.ifindex)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("if{}", key.ifindex));
        if key.netns == self.own_cookie {
            name
        } else {
            format!("{name} ({})", space.netns.info().label(self.host))
        }
    }

    fn detach_all(&mut self) {
        for space in self.spaces.values_mut() {
            space.reconciler.detach_all();
        }
    }

    fn covered(&self) -> usize {
        self.spaces.values().map(|s| s.reconciler.managed().len()).sum()
    }
}

/// The bpffs under the pin directory was unmounted (by hand, by a careless
/// clean-up): every link pinned there went with it and the guests are
/// unprotected. Mount a new one and load the program again (the next full
/// pass attaches every interface), or fail with one line so that the service
/// manager shows it (under systemd, without CAP_SYS_ADMIN).
fn recover_pin_dir(old: &PinDir, layout: &crate::program::LayoutSource) -> Result<PinDir, AgentError> {
    log::warn!(
        "pin directory {} is no longer on a bpffs (unmounted?): the attachments pinned there are gone; mounting a new one and attaching again",
        old.path().display()
    );
    let pins = PinDir::prepare(old.path()).map_err(|source| AgentError::PinDirLost {
        path: old.path().to_path_buf(),
        source: Box::new(source),
    })?;
    let _lock = pins.lock(pins::LOCK_TIMEOUT)?;
    program::load_or_open(&pins, layout)?;
    Ok(pins)
}

/// The link monitor's descriptor, for the runtime to watch (the agent owns
/// the socket).
struct Watched(std::os::fd::RawFd);

impl AsRawFd for Watched {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

/// Registers `inner`'s descriptor with the runtime.
fn register<T: AsRawFd>(inner: T, what: &'static str) -> Result<AsyncFd<T>, AgentError> {
    readable_only(inner).map_err(|source| AgentError::Sys { op: what, source })
}

fn readable_only<T: AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: `inner` owns its descriptor, which stays open for as long as
    // the AsyncFd holds `inner`.
    Ok(unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }?)
}

fn open_events(pins: &PinDir) -> Option<AsyncFd<EventStream>> {
    match EventStream::open(pins) {
        Ok(stream) => match readable_only(stream) {
            Ok(e) => Some(e),
            Err(e) => {
                log::warn!("no fill events (registering the ring buffer: {e})");
                None
            }
        },
        Err(e) => {
            log::warn!("no fill events ({e})");
            None
        }
    }
}

/// Waits until `at`; forever when there is nothing to wait for.
async fn retry_at(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => pending().await,
    }
}

/// Waits until `fd` (if any) is readable; forever when there is none.
async fn readable<T: std::os::fd::AsRawFd>(
    fd: &mut Option<AsyncFd<T>>,
) -> std::io::Result<tokio::io::unix::AsyncFdReadyMutGuard<'_, T>> {
    match fd {
        Some(fd) => fd.readable_mut().await,
        None => pending().await,
    }
}

fn spawn_http(
    listener: tokio::net::TcpListener,
    health: &Arc<Health>,
    shared: &Arc<RwLock<Shared>>,
    pin_dir: &Path,
    host: Option<u64>,
    per_guest: bool,
) -> JoinHandle<()> {
    let shared = Arc::clone(shared);
    let pin_dir = pin_dir.to_path_buf();
    let render: http::Render = Arc::new(move || {
        let shared = shared.read().unwrap_or_else(|e| e.into_inner());
        let (stats, guests) = match PinDir::open(&pin_dir) {
            Ok(Some(pins)) => metrics::read(&pins, &shared.namespaces).map_err(|e| e.to_string())?,
            Ok(None) => Default::default(),
            Err(e) => return Err(e.to_string()),
        };
        metrics::encode(
            &stats,
            &metrics::Context {
                host,
                pods: Some(&shared.pods),
                unattached: &shared.unattached,
                guests: &guests,
                per_guest,
            },
        )
        .map_err(|e| e.to_string())
    });
    tokio::spawn(http::serve(listener, Arc::clone(health), render))
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(pin_dir: PathBuf, settings: Settings) -> Result<(), AgentError> {
    let sys = |op| move |source| AgentError::Sys { op, source };
    // Bind first: a port in use should stop the agent before it changes
    // anything.
    let listener = match settings.metrics_addr {
        MetricsAddr::On(addr) => Some(
            http::bind(addr)
                .await
                .map_err(|source| AgentError::Bind { addr, source })?,
        ),
        MetricsAddr::Off => None,
    };
    let mut sigterm = signal(SignalKind::terminate()).map_err(sys("sigaction(SIGTERM)"))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(sys("sigaction(SIGINT)"))?;
    let pins = PinDir::prepare(&pin_dir)?;
    let all = !matches!(settings.netns, Select::Own);
    // Subscribe before the first full pass, so no interface slips between.
    let link_monitor = Monitor::open(all)?;
    {
        // Load now, so that attaching to a new interface takes a link only.
        let _lock = pins.lock(pins::LOCK_TIMEOUT)?;
        program::load_or_open(&pins, &settings.attach.layout)?;
    }
    let mut watcher = if all {
        Some(register(Watcher::new()?, "registering the inotify descriptor")?)
    } else {
        None
    };
    let mut events = open_events(&pins);
    let shared = Arc::new(RwLock::new(Shared::default()));
    let health = Health::new();
    let mut agent = Agent::new(pins, settings, link_monitor, Arc::clone(&shared))?;
    // Declared after the agent: deregistered before its socket closes.
    let mut monitor = Some(register(
        Watched(agent.monitor.as_raw_fd()),
        "registering the netlink socket",
    )?);
    block_in_place(|| {
        agent.full(agent.own_cookie);
        agent.discover(true);
        agent.publish();
    });
    let settings = &agent.settings;
    log::info!(
        "dhcpfix {} running: interfaces {}, network namespaces {}, {} mode, ports {}, pin directory {}, metrics {}",
        env!("CARGO_PKG_VERSION"),
        settings.patterns,
        settings.netns,
        settings.attach.mode,
        settings
            .attach
            .ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(","),
        agent.pins.path().display(),
        match settings.metrics_addr {
            MetricsAddr::On(a) => format!("http://{a}/metrics"),
            MetricsAddr::Off => "off".into(),
        }
    );
    health.beat();
    health.set_ready();
    let mut server = listener.map(|l| {
        spawn_http(
            l,
            &health,
            &shared,
            &pin_dir,
            agent.host,
            agent.settings.guest_metrics,
        )
    });
    let mut tick = tokio::time::interval(TICK);

    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            guard = readable(&mut monitor) => {
                let mut guard = guard.map_err(sys("waiting on the netlink socket"))?;
                let more = block_in_place(|| agent.read_events())?;
                if !more {
                    guard.clear_ready();
                }
            }
            guard = readable(&mut watcher) => {
                let mut guard = guard.map_err(sys("waiting on inotify"))?;
                guard.get_inner_mut().drain();
                guard.clear_ready();
                drop(guard);
                // Only /run/netns changed.
                block_in_place(|| agent.discover(false));
            }
            guard = readable(&mut events) => {
                let mut guard = guard.map_err(sys("waiting on the ring buffer"))?;
                let n = {
                    let stream = guard.get_inner_mut();
                    let names = |key: &dhcpfix_common::key::IfaceKey| agent.name_of(key);
                    stream.drain(MAX_PER_DRAIN, names)
                };
                if n < MAX_PER_DRAIN {
                    guard.clear_ready();
                }
            }
            _ = retry_at(agent.next_retry()) => {
                block_in_place(|| agent.retry_pending());
            }
            _ = tick.tick() => {
                block_in_place(|| {
                    if !agent.pins.is_current() {
                        let pins = recover_pin_dir(&agent.pins, &agent.settings.attach.layout)?;
                        agent.set_pins(pins.clone());
                        events = open_events(&pins);
                        agent.full_all();
                    }
                    if let Some(w) = watcher.as_mut() {
                        w.get_mut().watch();
                    }
                    if let Some(e) = events.as_mut() {
                        e.get_mut().flush(Instant::now());
                        if !e.get_ref().is_current(&agent.pins) {
                            // The program was removed and loaded again.
                            events = open_events(&agent.pins);
                        }
                    }
                    agent.tick();
                    Ok::<(), AgentError>(())
                })?;
                // A listener that died (it should not) is started again.
                if server.as_ref().is_some_and(JoinHandle::is_finished) {
                    if let MetricsAddr::On(addr) = agent.settings.metrics_addr {
                        log::error!("metrics: the listener stopped; starting it again on {addr}");
                        server = match http::bind(addr).await {
                            Ok(l) => Some(spawn_http(l, &health, &shared, &pin_dir, agent.host, agent.settings.guest_metrics)),
                            Err(e) => {
                                log::error!("metrics: binding {addr} again: {e}");
                                server.take()
                            }
                        };
                    }
                }
            }
        }
        health.beat();
    }

    if let Some(stream) = events.as_mut() {
        let names = |key: &dhcpfix_common::key::IfaceKey| agent.name_of(key);
        stream.get_mut().drain(usize::MAX, names);
        stream.get_mut().flush(Instant::now() + super::events::WINDOW);
    }
    if let Some(server) = server {
        server.abort();
    }
    if agent.settings.detach_on_exit {
        log::info!("stopping: detaching (--detach-on-exit)");
        block_in_place(|| agent.detach_all());
    } else {
        log::info!(
            "stopping: {} attachment(s) stay in place; guests remain covered",
            agent.covered()
        );
    }
    Ok(())
}
