//! The agent's settings: command-line flags over an optional TOML file.
//!
//! ```toml
//! # /etc/dhcpfix/dhcpfix.toml
//! interfaces = ["vnet*", "tap*"]
//! metrics_addr = "127.0.0.1:9788"   # or "none"
//! mode = "fill"                     # or "audit"
//! ports = [68, 67, 546, 547]
//! method = "auto"                   # or "tcx", "netlink"
//! detach_on_exit = false
//! netns = "all"                     # or ["cni-*"]; default: its own only
//! guest_metrics = true              # per-guest series (mac label)
//! ```

use std::{fmt, net::SocketAddr, path::Path, str::FromStr, time::Duration};

use dhcpfix_common::config::{DEFAULT_PORTS, MAX_PORTS};
use serde::Deserialize;

use super::{namespaces::Select, pattern::Patterns, AgentError};
use crate::{
    attach::{AttachOptions, Method, Mode},
    program::LayoutSource,
};

/// Where `/metrics` is served unless told otherwise (loopback only).
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9788";
/// How often the agent re-reads every interface even without link events,
/// in case the kernel dropped some (it says so, and the agent then re-reads
/// at once; this is the backstop).
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(60);

/// `--metrics-addr`: an address, or `none`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsAddr {
    Off,
    On(SocketAddr),
}

impl FromStr for MetricsAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("none") {
            return Ok(Self::Off);
        }
        s.parse().map(Self::On).map_err(|_| {
            format!("{s:?} is not an IP address and port (such as 127.0.0.1:9788 or [::1]:9788) or \"none\"")
        })
    }
}

impl fmt::Display for MetricsAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Off => f.write_str("none"),
            Self::On(addr) => addr.fmt(f),
        }
    }
}

/// The configuration file; every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub interfaces: Option<Vec<String>>,
    pub metrics_addr: Option<String>,
    pub mode: Option<String>,
    pub ports: Option<Vec<u16>>,
    pub method: Option<String>,
    pub detach_on_exit: Option<bool>,
    pub netns: Option<NetnsList>,
    pub guest_metrics: Option<bool>,
}

/// `netns = "all"` or `netns = ["cni-*", ...]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum NetnsList {
    One(String),
    Many(Vec<String>),
}

impl FileConfig {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, AgentError> {
        let text = std::fs::read_to_string(path).map_err(|source| AgentError::ConfigRead {
            path: path.into(),
            source,
        })?;
        Self::parse(&text).map_err(|reason| AgentError::Config {
            path: path.into(),
            reason,
        })
    }

    /// [`FileConfig::parse`], for the fuzz target (`fuzz/`).
    #[doc(hidden)]
    pub fn fuzz_parse(text: &str) -> Result<Self, String> {
        Self::parse(text)
    }

    fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| {
            // toml's messages span lines (with a source excerpt); keep the gist.
            e.message().trim().replace('\n', " ")
                + &e.span()
                    .map(|s| format!(" (at byte {})", s.start))
                    .unwrap_or_default()
        })
    }
}

/// What the command line says; `None` means "not given".
#[derive(Debug, Default)]
pub struct Overrides {
    pub interfaces: Vec<String>,
    pub metrics_addr: Option<MetricsAddr>,
    pub mode: Option<Mode>,
    pub ports: Option<Vec<u16>>,
    pub method: Option<Method>,
    pub detach_on_exit: bool,
    pub layout: LayoutSource,
    pub resync: Option<Duration>,
    pub netns: Vec<String>,
    /// `--no-guest-metrics`.
    pub no_guest_metrics: bool,
}

/// Everything the agent runs with.
#[derive(Clone, Debug)]
pub struct Settings {
    pub patterns: Patterns,
    /// Which network namespaces besides its own it covers.
    pub netns: Select,
    pub attach: AttachOptions,
    pub metrics_addr: MetricsAddr,
    pub detach_on_exit: bool,
    pub resync: Duration,
    /// Series per guest on /metrics (the per-interface ones are always there).
    pub guest_metrics: bool,
}

impl Settings {
    /// Command-line values win over the file's, key by key.
    pub fn resolve(cli: Overrides, file: Option<(&Path, FileConfig)>) -> Result<Self, AgentError> {
        let (path, file) = match file {
            Some((p, f)) => (Some(p), f),
            None => (None, FileConfig::default()),
        };
        let bad = |reason: String| match path {
            Some(path) => AgentError::Config {
                path: path.into(),
                reason,
            },
            None => AgentError::Settings(reason),
        };
        let globs = if cli.interfaces.is_empty() {
            file.interfaces.unwrap_or_default()
        } else {
            cli.interfaces
        };
        let patterns = Patterns::new(&globs)?;
        let mode = match (cli.mode, file.mode.as_deref()) {
            (Some(m), _) => m,
            (None, None | Some("fill")) => Mode::Fill,
            (None, Some("audit")) => Mode::Audit,
            (None, Some(other)) => return Err(bad(format!("mode {other:?}: use \"fill\" or \"audit\""))),
        };
        let method = match (cli.method, file.method.as_deref()) {
            (Some(m), _) => m,
            (None, None | Some("auto")) => Method::Auto,
            (None, Some("tcx")) => Method::Tcx,
            (None, Some("netlink")) => Method::Netlink,
            (None, Some(other)) => {
                return Err(bad(format!(
                    "method {other:?}: use \"auto\", \"tcx\" or \"netlink\""
                )))
            }
        };
        let ports = cli.ports.or(file.ports).unwrap_or_else(|| DEFAULT_PORTS.to_vec());
        if ports.is_empty() || ports.len() > MAX_PORTS || ports.contains(&0) {
            return Err(bad(format!(
                "ports {ports:?}: give 1 to {MAX_PORTS} UDP ports between 1 and 65535"
            )));
        }
        let netns = match (cli.netns.is_empty(), file.netns) {
            (false, _) => Select::new(&cli.netns)?,
            (true, Some(NetnsList::One(one))) => Select::new(&[one])?,
            (true, Some(NetnsList::Many(many))) => Select::new(&many)?,
            (true, None) => Select::Own,
        };
        let metrics_addr = match (cli.metrics_addr, file.metrics_addr) {
            (Some(a), _) => a,
            (None, Some(s)) => s.parse().map_err(|e: String| bad(format!("metrics_addr: {e}")))?,
            (None, None) => DEFAULT_METRICS_ADDR.parse().map_err(bad)?,
        };
        Ok(Self {
            patterns,
            netns,
            attach: AttachOptions {
                mode,
                ports,
                method,
                layout: cli.layout,
                lock_timeout: crate::pins::LOCK_TIMEOUT,
            },
            metrics_addr,
            detach_on_exit: cli.detach_on_exit || file.detach_on_exit.unwrap_or(false),
            resync: cli.resync.unwrap_or(DEFAULT_RESYNC),
            guest_metrics: !cli.no_guest_metrics && file.guest_metrics.unwrap_or(true),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_values_apply_and_flags_win() {
        let file = FileConfig::parse(
            "interfaces = [\"vnet*\", \"tap*\"]\nmetrics_addr = \"none\"\nmode = \"audit\"\nports = [68]\n",
        )
        .unwrap();
        let s = Settings::resolve(Overrides::default(), Some((Path::new("f.toml"), file))).unwrap();
        assert!(s.patterns.matches("tap1i0") && s.patterns.matches("vnet3"));
        assert_eq!(s.metrics_addr, MetricsAddr::Off);
        assert_eq!(
            (s.attach.mode, s.attach.ports.as_slice()),
            (Mode::Audit, &[68u16][..])
        );

        let file = FileConfig::parse("interfaces = [\"vnet*\"]\nmode = \"audit\"\n").unwrap();
        let cli = Overrides {
            interfaces: vec!["macvtap*".into()],
            mode: Some(Mode::Fill),
            metrics_addr: Some("127.0.0.1:1".parse().unwrap()),
            ..Default::default()
        };
        let s = Settings::resolve(cli, Some((Path::new("f.toml"), file))).unwrap();
        assert!(s.patterns.matches("macvtap0") && !s.patterns.matches("vnet0"));
        assert_eq!(s.attach.mode, Mode::Fill);
        assert_eq!(s.attach.ports, DEFAULT_PORTS.to_vec());
        assert_eq!(s.metrics_addr.to_string(), "127.0.0.1:1");
    }

    #[test]
    fn namespaces_from_file_and_flags() {
        let file = FileConfig::parse("interfaces = [\"tap*\"]\nnetns = \"all\"\n").unwrap();
        let s = Settings::resolve(Overrides::default(), Some((Path::new("f.toml"), file))).unwrap();
        assert!(matches!(s.netns, Select::All));
        let file = FileConfig::parse("interfaces = [\"tap*\"]\nnetns = [\"cni-*\"]\n").unwrap();
        let cli = Overrides {
            netns: vec!["qdhcp-*".into()],
            ..Default::default()
        };
        let s = Settings::resolve(cli, Some((Path::new("f.toml"), file))).unwrap();
        assert!(s.netns.covers(Some("qdhcp-1")) && !s.netns.covers(Some("cni-1")));
    }

    #[test]
    fn defaults() {
        let cli = Overrides {
            interfaces: vec!["vnet*".into()],
            ..Default::default()
        };
        let s = Settings::resolve(cli, None).unwrap();
        assert_eq!(s.metrics_addr.to_string(), DEFAULT_METRICS_ADDR);
        assert_eq!(s.attach.method, Method::Auto);
        assert!(!s.detach_on_exit);
        assert_eq!(s.resync, DEFAULT_RESYNC);
        assert!(s.guest_metrics);
        let file = FileConfig::parse("interfaces = [\"vnet*\"]\nguest_metrics = false\n").unwrap();
        let s = Settings::resolve(Overrides::default(), Some((Path::new("f.toml"), file))).unwrap();
        assert!(!s.guest_metrics);
    }

    #[test]
    fn mistakes_are_one_line_errors() {
        let e = FileConfig::parse("interface = [\"vnet*\"]\n").unwrap_err();
        assert!(e.contains("interface") && !e.contains('\n'), "{e}");
        let e = FileConfig::parse("ports = \"68\"\n").unwrap_err();
        assert!(!e.contains('\n'), "{e}");
        let cases = [
            "interfaces = [\"vnet*\"]\nmode = \"fix\"\n",
            "interfaces = [\"vnet*\"]\nmetrics_addr = \"localhost\"\n",
            "interfaces = [\"vnet*\"]\nports = [1, 2, 3, 4, 5]\n",
            "interfaces = []\n",
        ];
        for text in cases {
            let file = FileConfig::parse(text).unwrap();
            let e = Settings::resolve(Overrides::default(), Some((Path::new("/etc/d.toml"), file)))
                .unwrap_err()
                .to_string();
            assert!(!e.contains('\n'), "{e}");
        }
        assert!(matches!(
            Settings::resolve(Overrides::default(), None),
            Err(AgentError::NoPatterns)
        ));
    }
}
