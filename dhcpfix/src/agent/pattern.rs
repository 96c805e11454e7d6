//! Which interfaces the agent covers: shell-style globs such as `vnet*`.

use std::fmt;

use super::AgentError;

/// A non-empty list of interface name globs.
#[derive(Clone, Debug)]
pub struct Patterns(Vec<glob::Pattern>);

impl Patterns {
    /// Parses each glob (`*`, `?`, `[...]`); fails on an empty list, a
    /// malformed glob, or one that could never match an interface name.
    pub fn new<S: AsRef<str>>(globs: &[S]) -> Result<Self, AgentError> {
        if globs.is_empty() {
            return Err(AgentError::NoPatterns);
        }
        let mut out = Vec::with_capacity(globs.len());
        for g in globs {
            let g = g.as_ref();
            let bad = |reason: String| AgentError::BadPattern {
                pattern: g.to_owned(),
                reason,
            };
            if g.is_empty() || g.contains('/') || g.chars().any(char::is_whitespace) {
                return Err(bad(
                    "interface names have no '/', no spaces and are not empty".into()
                ));
            }
            out.push(glob::Pattern::new(g).map_err(|e| bad(e.msg.to_owned()))?);
        }
        Ok(Self(out))
    }

    /// Whether `name` matches any of the globs.
    pub fn matches(&self, name: &str) -> bool {
        self.0.iter().any(|p| p.matches(name))
    }
}

impl fmt::Display for Patterns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all: Vec<&str> = self.0.iter().map(glob::Pattern::as_str).collect();
        f.write_str(&all.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_tap_names() {
        let p = Patterns::new(&["vnet*", "tap?i[0-9]", "macvtap*"]).unwrap();
        for yes in ["vnet0", "vnet12", "vnet", "tap1i0", "macvtap3"] {
            assert!(p.matches(yes), "{yes}");
        }
        for no in ["br0", "eth0", "xvnet0", "tap12i0", "tap1ix", "fwbr100i0"] {
            assert!(!p.matches(no), "{no}");
        }
        assert_eq!(p.to_string(), "vnet* tap?i[0-9] macvtap*");
    }

    #[test]
    fn bad_globs_are_refused() {
        assert!(matches!(Patterns::new::<&str>(&[]), Err(AgentError::NoPatterns)));
        for bad in ["", "a/b", "vnet[", "v net*"] {
            let e = Patterns::new(&[bad]).unwrap_err().to_string();
            assert!(e.contains("pattern") && !e.contains('\n'), "{bad}: {e}");
        }
    }
}
