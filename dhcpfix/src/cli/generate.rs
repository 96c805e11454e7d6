//! `dhcpfix generate` (hidden): man pages and shell completions, generated
//! from the clap definitions, for packagers (`cargo xtask deb` ships them).
//!
//! ```text
//! dhcpfix generate man DIR                 # dhcpfix.1, dhcpfix-attach.1, ...
//! dhcpfix generate completions SHELL DIR   # bash, zsh or fish
//! ```

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context;
use clap::{Command, CommandFactory};
use clap_complete::Shell;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// Write one roff man page per (visible) command into DIR.
    Man {
        /// Output directory (created if missing).
        dir: PathBuf,
    },
    /// Write the completion script for SHELL into DIR, under the name that
    /// shell looks for (bash: dhcpfix, zsh: _dhcpfix, fish: dhcpfix.fish).
    Completions {
        #[arg(value_enum)]
        shell: CompletionShell,
        /// Output directory (created if missing).
        dir: PathBuf,
    },
}

/// The shells whose completion directories Debian packages install into.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

impl From<CompletionShell> for Shell {
    fn from(s: CompletionShell) -> Self {
        match s {
            CompletionShell::Bash => Shell::Bash,
            CompletionShell::Zsh => Shell::Zsh,
            CompletionShell::Fish => Shell::Fish,
        }
    }
}

fn create_dir(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let cmd = super::Cli::command();
    match args.what {
        What::Man { dir } => {
            create_dir(&dir)?;
            // Hidden commands (this one) get no page.
            clap_mangen::generate_to(cmd, &dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
        }
        What::Completions { shell, dir } => {
            create_dir(&dir)?;
            let mut cmd = without_hidden_commands(&cmd);
            clap_complete::generate_to(Shell::from(shell), &mut cmd, "dhcpfix", &dir)
                .with_context(|| format!("writing {shell:?} completions into {}", dir.display()))?;
        }
    }
    Ok(())
}

/// `cmd` without its hidden subcommands: clap_complete offers those too,
/// and nobody should be offered `generate` at a prompt.
fn without_hidden_commands(cmd: &Command) -> Command {
    let mut out = Command::new("dhcpfix")
        .version(env!("CARGO_PKG_VERSION"))
        .about(cmd.get_about().cloned().unwrap_or_default());
    for arg in cmd.get_arguments() {
        out = out.arg(arg.clone());
    }
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        out = out.subcommand(sub.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_offer_every_visible_command_and_no_hidden_one() {
        let full = super::super::Cli::command();
        let visible = without_hidden_commands(&full);
        let names = |c: &Command| {
            c.get_subcommands()
                .map(|s| s.get_name().to_owned())
                .collect::<Vec<_>>()
        };
        assert!(names(&full).contains(&"generate".to_owned()));
        assert!(!names(&visible).contains(&"generate".to_owned()));
        assert_eq!(names(&visible).len() + 1, names(&full).len());
        assert!(visible.get_arguments().any(|a| a.get_id() == "pin_dir"));
        let mut out = Vec::new();
        clap_complete::generate(Shell::Bash, &mut visible.clone(), "dhcpfix", &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("attach") && text.contains("--pin-dir"), "{text}");
        assert!(!text.contains("generate"), "{text}");
    }
}
