//! The pinned maps and their entries.

use std::io;

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuHashMap, PerCpuValues, RingBuf};
use dhcpfix_common::{
    config::{port_bit, IfaceConfig},
    counters::Counters,
    guest::{GuestKey, GuestState, SLOTS_PER_INTERFACE},
    key::IfaceKey,
    settings::Settings,
    CONFIG_MAP, COUNTERS_MAP, EVENTS_MAP, GUESTS_MAP, PORTS_MAP, SETTINGS_MAP,
};

use super::{describe, map_rel, PinDir, PinsError};

/// `BPF_ANY`: create or replace.
const ANY: u64 = 0;

/// The errno behind an aya map error, for one-line messages.
fn io_of(e: MapError) -> io::Error {
    match e {
        MapError::SyscallError(s) => s.io_error,
        MapError::KeyNotFound | MapError::ElementNotFound => io::ErrorKind::NotFound.into(),
        other => io::Error::other(other.to_string()),
    }
}

fn map_data(pins: &PinDir, name: &str) -> Result<MapData, PinsError> {
    MapData::from_pin(pins.fd_path(&map_rel(name))).map_err(|e| PinsError::Open {
        path: pins.shown(&map_rel(name)),
        reason: io_of(e).to_string(),
    })
}

fn typed<T, E: std::fmt::Display>(pins: &PinDir, name: &str, t: Result<T, E>) -> Result<T, PinsError> {
    t.map_err(|e| PinsError::Open {
        path: pins.shown(&map_rel(name)),
        reason: e.to_string(),
    })
}

/// The per-interface maps, opened from their pins.
pub struct Maps {
    pub config: HashMap<MapData, IfaceKey, IfaceConfig>,
    pub counters: PerCpuHashMap<MapData, IfaceKey, Counters>,
    pub ports: Array<MapData, u64>,
    pub settings: Array<MapData, Settings>,
    pub guests: HashMap<MapData, GuestKey, GuestState>,
}

impl Maps {
    pub fn open(pins: &PinDir) -> Result<Self, PinsError> {
        Ok(Self {
            config: typed(
                pins,
                CONFIG_MAP,
                HashMap::try_from(Map::HashMap(map_data(pins, CONFIG_MAP)?)),
            )?,
            counters: typed(
                pins,
                COUNTERS_MAP,
                PerCpuHashMap::try_from(Map::PerCpuHashMap(map_data(pins, COUNTERS_MAP)?)),
            )?,
            ports: typed(
                pins,
                PORTS_MAP,
                Array::try_from(Map::Array(map_data(pins, PORTS_MAP)?)),
            )?,
            settings: typed(
                pins,
                SETTINGS_MAP,
                Array::try_from(Map::Array(map_data(pins, SETTINGS_MAP)?)),
            )?,
            guests: typed(
                pins,
                GUESTS_MAP,
                HashMap::try_from(Map::HashMap(map_data(pins, GUESTS_MAP)?)),
            )?,
        })
    }

    /// The guests seen on `key`'s interface.
    pub fn guests_of(&self, key: &IfaceKey) -> Vec<(GuestKey, GuestState)> {
        guest_keys(key)
            .filter_map(|g| self.guests.get(&g, 0).ok().map(|s| (g, s)))
            .collect()
    }

    /// Every guest.
    pub fn all_guests(&self) -> Vec<(GuestKey, GuestState)> {
        self.guests.iter().flatten().collect()
    }

    /// The configuration of `key`, if it has one.
    pub fn config(&self, key: &IfaceKey) -> Option<IfaceConfig> {
        self.config.get(key, 0).ok()
    }

    /// Every configuration entry.
    pub fn configs(&self) -> Vec<(IfaceKey, IfaceConfig)> {
        self.config.iter().flatten().collect()
    }

    /// Writes the configuration of `key` (its ports into the bitmap first:
    /// the classifier's fast path tests the bitmap before the configuration).
    /// [`PinsError::Full`] when the map has no room for a new entry.
    pub fn configure(&mut self, key: &IfaceKey, cfg: IfaceConfig) -> Result<(), PinsError> {
        let err = |op, map, source| PinsError::Map {
            op,
            map,
            key: describe(key),
            source,
        };
        for port in cfg.ports.iter().copied().filter(|p| *p != 0) {
            let (word, bit) = port_bit(port);
            let value = self
                .ports
                .get(&word, 0)
                .map_err(|e| err("BPF_MAP_LOOKUP_ELEM", PORTS_MAP, io_of(e)))?;
            if value & bit == 0 {
                self.ports
                    .set(word, value | bit, ANY)
                    .map_err(|e| err("BPF_MAP_UPDATE_ELEM", PORTS_MAP, io_of(e)))?;
            }
        }
        match self.config.insert(key, cfg, ANY) {
            Ok(()) => Ok(()),
            Err(e) => match io_of(e) {
                e if e.raw_os_error() == Some(libc::E2BIG) => Err(PinsError::Full),
                e => Err(err("BPF_MAP_UPDATE_ELEM", CONFIG_MAP, e)),
            },
        }
    }

    /// Starts the counters of `key` from zero, whatever an earlier
    /// attachment with the same key left there.
    pub fn reset_counters(&mut self, key: &IfaceKey) -> Result<(), PinsError> {
        let err = |op, source| PinsError::Map {
            op,
            map: COUNTERS_MAP,
            key: describe(key),
            source,
        };
        let ncpu =
            aya::util::nr_cpus().map_err(|(_, e)| err("reading /sys/devices/system/cpu/possible", e))?;
        let zeros = PerCpuValues::try_from(vec![Counters::default(); ncpu])
            .map_err(|e| err("building per-CPU values", e))?;
        match self.counters.insert(key, zeros, ANY) {
            Ok(()) => Ok(()),
            Err(e) => match io_of(e) {
                e if e.raw_os_error() == Some(libc::E2BIG) => Err(PinsError::Full),
                e => Err(err("BPF_MAP_UPDATE_ELEM", e)),
            },
        }
    }

    /// Removes the configuration, counters and guests of `key` (any may be
    /// gone).
    pub fn forget(&mut self, key: &IfaceKey) {
        let _ = self.config.remove(key);
        let _ = self.counters.remove(key);
        for g in guest_keys(key) {
            let _ = self.guests.remove(&g);
        }
    }

    /// The counters of `key`, summed over CPUs; zero if it has none.
    pub fn counters(&self, key: &IfaceKey) -> Counters {
        let mut sum = Counters::default();
        if let Ok(per_cpu) = self.counters.get(key, 0) {
            for c in per_cpu.iter() {
                sum.add(c);
            }
        }
        sum
    }

    /// Keys that have counters.
    pub fn counter_keys(&self) -> Vec<IfaceKey> {
        self.counters.keys().flatten().collect()
    }

    /// Sets the run-time switches.
    pub fn set_settings(&mut self, settings: Settings) -> Result<(), PinsError> {
        self.settings.set(0, settings, ANY).map_err(|e| PinsError::Map {
            op: "BPF_MAP_UPDATE_ELEM",
            map: SETTINGS_MAP,
            key: "entry 0".into(),
            source: io_of(e),
        })
    }
}

/// Every key a guest of `key`'s interface can have: each slot, each family.
fn guest_keys(key: &IfaceKey) -> impl Iterator<Item = GuestKey> + '_ {
    [4u32, 6].into_iter().flat_map(move |family| {
        (0..SLOTS_PER_INTERFACE).map(move |slot| GuestKey {
            netns: key.netns,
            ifindex: key.ifindex,
            slot: (family << 24) | slot,
        })
    })
}

/// The ring buffer of fill events (one reader at a time: `dhcpfix run`).
pub fn events(pins: &PinDir) -> Result<RingBuf<MapData>, PinsError> {
    typed(
        pins,
        EVENTS_MAP,
        RingBuf::try_from(Map::RingBuf(map_data(pins, EVENTS_MAP)?)),
    )
}

/// The kernel id of the pinned events map (changes when the program is
/// loaded anew).
pub fn events_id(pins: &PinDir) -> Option<u32> {
    aya::maps::MapInfo::from_pin(pins.fd_path(&map_rel(EVENTS_MAP)))
        .ok()
        .map(|info| info.id())
}
