//! Bringing the attachments in line with the interfaces that exist: attach
//! to every matching interface, keep what is attached already, remove what
//! deleted interfaces left behind.
//!
//! The pins are the truth, not the agent's memory: a full pass rebuilds
//! everything from them and from the kernel's list of interfaces, so an
//! agent that was killed, restarted or missed events converges.

use std::collections::{BTreeMap, HashMap};

use dhcpfix_common::key::IfaceKey;

use super::{pattern::Patterns, AgentError};
use crate::{
    attach::{self, AttachOptions, Attached},
    netdev::Link,
    netns::Netns,
    pins::PinDir,
};

/// The agent's view of the interfaces of one network namespace.
pub struct Reconciler {
    pins: PinDir,
    netns: Netns,
    patterns: Patterns,
    opts: AttachOptions,
    /// Matching interfaces attached now: ifindex -> name.
    managed: BTreeMap<u32, String>,
    /// Matching interfaces that could not be attached, with the error:
    /// retried on full passes only, and logged again only if it changes.
    failed: BTreeMap<u32, (String, String)>,
}

impl Reconciler {
    pub fn new(pins: PinDir, netns: Netns, patterns: Patterns, opts: AttachOptions) -> Self {
        Self {
            pins,
            netns,
            patterns,
            opts,
            managed: BTreeMap::new(),
            failed: BTreeMap::new(),
        }
    }

    /// Follows a pin directory mounted anew (the old one was unmounted).
    pub fn set_pins(&mut self, pins: PinDir) {
        self.pins = pins;
        self.managed.clear();
    }

    /// Interfaces the agent covers now, by ifindex.
    pub fn managed(&self) -> &BTreeMap<u32, String> {
        &self.managed
    }

    /// The name of `ifindex` if the agent covers it.
    pub fn name_of(&self, ifindex: u32) -> Option<&str> {
        self.managed.get(&ifindex).map(String::as_str)
    }

    /// How an interface reads in the log: its name, and its namespace when
    /// that is not the agent's own.
    fn shown(&self, name: &str) -> String {
        if self.netns.is_current() {
            name.to_owned()
        } else {
            format!("{name} in {}", self.netns)
        }
    }

    fn key(&self, ifindex: u32) -> IfaceKey {
        IfaceKey::new(self.netns.cookie(), ifindex)
    }

    /// A full pass over `links`, every interface of the namespace.
    pub fn full(&mut self, links: &[Link]) -> Result<(), AgentError> {
        let by_index: HashMap<u32, &str> = links.iter().map(|l| (l.ifindex, l.name.as_str())).collect();
        // Dead pins first, so that a re-created interface is attached anew.
        let here = Some(self.netns.cookie());
        for gone in attach::remove_dead(
            &self.pins,
            std::slice::from_ref(&self.netns),
            here,
            self.opts.lock_timeout,
        )? {
            log::info!(
                "detached {}: the interface is gone; removed its pin",
                self.shown(&gone.name)
            );
        }
        let mut attached: HashMap<String, u32> = HashMap::new();
        for a in attach::list_in(&self.pins, &self.netns)? {
            if !a.attached || a.netns.cookie != self.netns.cookie() {
                continue;
            }
            match by_index.get(&a.ifindex) {
                Some(now) if *now == a.name => {
                    attached.insert(a.name, a.ifindex);
                }
                // The interface behind this attachment was renamed. One
                // recorded under one of our patterns is ours to fix.
                Some(now) if self.patterns.matches(&a.name) => {
                    let link = Link {
                        ifindex: a.ifindex,
                        name: (*now).to_owned(),
                        ..Default::default()
                    };
                    if self.follow_rename(&a.name, &link) {
                        attached.insert(link.name, link.ifindex);
                    }
                }
                _ => {}
            }
        }
        let before = std::mem::take(&mut self.managed);
        self.failed
            .retain(|ifindex, (name, _)| by_index.get(ifindex) == Some(&name.as_str()));
        for link in links {
            if !self.patterns.matches(&link.name) {
                continue;
            }
            let is_attached = attached.get(&link.name) == Some(&link.ifindex);
            if is_attached && before.get(&link.ifindex) == Some(&link.name) {
                self.managed.insert(link.ifindex, link.name.clone());
            } else {
                // New to this agent: attach, or adopt what is attached
                // already (its counters stay; its mode and ports become
                // this agent's).
                self.attach(link);
            }
        }
        Ok(())
    }

    /// `RTM_NEWLINK`: a new interface, or a change to one (up, master, name).
    pub fn changed(&mut self, link: &Link) {
        let known = self.managed.get(&link.ifindex).cloned();
        if known.as_deref() == Some(link.name.as_str()) {
            // The common case: flags changed on an interface we cover.
            return;
        }
        if let Some(old) = known {
            self.managed.remove(&link.ifindex);
            if self.follow_rename(&old, link) {
                self.managed.insert(link.ifindex, link.name.clone());
                return;
            }
        }
        let failed_before = self
            .failed
            .get(&link.ifindex)
            .is_some_and(|(name, _)| *name == link.name);
        if self.patterns.matches(&link.name) && !failed_before {
            self.attach(link);
        }
    }

    /// `RTM_DELLINK`: the interface is gone, and so is its attachment; its
    /// pin is left behind dead, with its configuration and counters.
    pub fn deleted(&mut self, link: &Link) {
        let covered = self.managed.remove(&link.ifindex);
        self.failed.remove(&link.ifindex);
        match attach::forget_deleted(&self.pins, &self.key(link.ifindex), self.opts.lock_timeout) {
            Ok(Some(gone)) if gone.had_link => {
                log::info!(
                    "detached {}: the interface was deleted; removed its pin",
                    link.name
                )
            }
            // A netlink filter has no pin: it went with the interface.
            Ok(_) if covered.is_some() => log::info!("detached {}: the interface was deleted", link.name),
            Ok(_) => {}
            Err(e) => log::error!("{}: {e}", link.name),
        }
    }

    /// Detaches from every interface the agent covers (`--detach-on-exit`).
    pub fn detach_all(&mut self) {
        for (_, name) in std::mem::take(&mut self.managed) {
            match attach::detach(&self.pins, &self.netns, &name, self.opts.lock_timeout) {
                Ok(attach::Detached::Removed) => log::info!("detached {}", self.shown(&name)),
                Ok(attach::Detached::NotAttached) => {}
                Err(e) => log::error!("detaching {}: {e}", self.shown(&name)),
            }
        }
    }

    fn attach(&mut self, link: &Link) {
        let result = attach::attach(&self.pins, &self.netns, &link.name, &self.opts);
        if result.is_ok() {
            self.failed.remove(&link.ifindex);
        }
        match result {
            Ok(Attached::New(method)) => {
                log::info!(
                    "attached {} (ifindex {}, {method}, {}, ports {})",
                    self.shown(&link.name),
                    link.ifindex,
                    self.opts.mode,
                    ports(&self.opts.ports)
                );
                self.managed.insert(link.ifindex, link.name.clone());
            }
            Ok(Attached::Existing(_)) => {
                log::info!(
                    "kept {} (ifindex {}): attached already",
                    self.shown(&link.name),
                    link.ifindex
                );
                self.managed.insert(link.ifindex, link.name.clone());
            }
            // Gone again before we got to it: its deletion event follows.
            Err(attach::AttachError::NoInterface { .. }) => {}
            // Deleted (or re-created) while we attached: not a failure; the
            // events that follow cover the new interface.
            Err(e) if !self.still_there(link) => {
                log::debug!("{}: gone while attaching ({e})", self.shown(&link.name));
            }
            Err(e) => {
                let message = e.to_string();
                let again = self.failed.get(&link.ifindex) == Some(&(link.name.clone(), message.clone()));
                if again {
                    log::debug!("{}: {message}", self.shown(&link.name));
                } else {
                    log::error!("{}: {message}", self.shown(&link.name));
                }
                self.failed.insert(link.ifindex, (link.name.clone(), message));
            }
        }
    }

    /// Whether `link` still exists under that name (asked inside its
    /// namespace).
    fn still_there(&self, link: &Link) -> bool {
        self.netns
            .run(|| crate::netdev::ifname(link.ifindex))
            .is_ok_and(|name| name.as_deref() == Some(link.name.as_str()))
    }

    /// Matching interfaces that could not be attached: (name, error).
    pub fn failed(&self) -> impl Iterator<Item = (&str, &str)> {
        self.failed.values().map(|(n, e)| (n.as_str(), e.as_str()))
    }

    /// The namespace this reconciler covers.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Interface `old` is now `link`: if the new name matches, its
    /// attachment follows it (true); otherwise it is detached (false).
    fn follow_rename(&self, old: &str, link: &Link) -> bool {
        let key = self.key(link.ifindex);
        if self.patterns.matches(&link.name) {
            match attach::rename(&self.pins, &key, &link.name, self.opts.lock_timeout) {
                Ok(true) => {
                    log::info!(
                        "{} was renamed to {}; its attachment follows",
                        self.shown(old),
                        link.name
                    );
                    return true;
                }
                Ok(false) => return false,
                Err(e) => log::error!("{old}: {e}"),
            }
        }
        match attach::detach(&self.pins, &self.netns, &link.name, self.opts.lock_timeout) {
            Ok(_) => log::info!("detached {old}: renamed to {}", link.name),
            Err(e) => log::error!("detaching {old} (renamed to {}): {e}", link.name),
        }
        false
    }
}

fn ports(ports: &[u16]) -> String {
    ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
}
