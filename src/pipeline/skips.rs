//! Skipped episodes, told to the user: a warning when one is skipped, the summary at the end of a run (the CLI
//! prints it on stderr; `meta/augmentation.json` keeps the list) and, when every selected episode was skipped,
//! the error the run ends with, which repeats the first reasons rather than only "no episodes were saved".

use std::path::Path;

use crate::error::{Error, Location};

/// How many reasons the summary and the all-skipped error spell out; the rest are counted.
pub const SHOWN: usize = 5;

/// A skipped episode, logged as it happens (stderr at the CLI's default level).
pub fn warn(episode: u64, reason: &str) {
    tracing::warn!("skipping {}", line(episode, reason));
}

/// `episode N: reason`, or the reason alone where its location already names the episode first.
fn line(episode: u64, reason: &str) -> String {
    let head = format!("episode {episode}");
    if reason.starts_with(&format!("{head},")) || reason.starts_with(&format!("{head} ")) {
        reason.to_string()
    } else {
        format!("{head}: {reason}")
    }
}

/// The lines `episode N: reason` of the first [`SHOWN`] skips, then how many more there were.
pub fn lines(skipped: &[(u64, String)]) -> Vec<String> {
    let mut out: Vec<String> = skipped
        .iter()
        .take(SHOWN)
        .map(|(e, why)| line(*e, why))
        .collect();
    if skipped.len() > SHOWN {
        out.push(format!(
            "... and {} more (meta/augmentation.json lists every one)",
            skipped.len() - SHOWN
        ));
    }
    out
}

/// The summary a finished run prints on stderr; `None` when nothing was skipped.
pub fn summary(skipped: &[(u64, String)]) -> Option<String> {
    if skipped.is_empty() {
        return None;
    }
    let mut s = format!(
        "warning: {} episode(s) skipped, not in the output (run with --strict to stop at the first):",
        skipped.len()
    );
    for l in lines(skipped) {
        s.push_str("\n  ");
        s.push_str(&l);
    }
    Some(s)
}

/// The error of a run that saved nothing because every selected episode was skipped: the input, and the reasons.
pub fn all_skipped(input: &Path, skipped: &[(u64, String)]) -> Error {
    Error::invalid(
        Location::file(input),
        format!(
            "no episodes were saved: all {} selected episodes were skipped; {}",
            skipped.len(),
            lines(skipped).join("; ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_repeated_and_counted() {
        let skipped: Vec<(u64, String)> = (0..7).map(|i| (i, format!("reason {i}"))).collect();
        let e = all_skipped(Path::new("ds"), &skipped).to_string();
        assert!(e.contains("all 7 selected episodes were skipped"), "{e}");
        assert!(
            e.contains("episode 0: reason 0") && e.contains("episode 4: reason 4"),
            "{e}"
        );
        assert!(!e.contains("reason 5") && e.contains("and 2 more"), "{e}");
        assert_eq!(
            line(3, "episode 3, field \"x\" (f): bad"),
            "episode 3, field \"x\" (f): bad"
        );
        assert!(summary(&[]).is_none());
        let s = summary(&skipped[..1]).unwrap();
        assert!(
            s.contains("1 episode(s) skipped") && s.contains("episode 0: reason 0"),
            "{s}"
        );
    }
}
