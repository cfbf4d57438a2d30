//! Prompt templates of pipeline targets: `{task}` is the episode's task, `{episode:COLUMN}` the episode's value of a
//! per-episode string column (LeRobot v3.0 `meta/episodes/…`; e.g. the LanguageTable generator's
//! `{episode:appearance/observation.images.appearance_0/name}`, so that a target renders the look one of the
//! episode's own cameras shows, and `vadapt eval --reference-key` can score it against that camera).

use std::collections::BTreeMap;

use crate::episode::Episode;
use crate::error::{Error, Location, Result};

const EPISODE: &str = "{episode:";

/// What a template can refer to, for one source episode.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PromptContext {
    /// The source episode (errors name it).
    pub episode: u64,
    pub task: String,
    /// The episode's string-valued per-episode columns.
    pub columns: BTreeMap<String, String>,
}

impl PromptContext {
    pub fn of(ep: &Episode) -> Self {
        let columns = ep
            .episode_columns
            .iter()
            .filter_map(|(f, _)| Some((f.name().clone(), ep.episode_columns.string(f.name())?)))
            .collect();
        Self {
            episode: ep.index.0,
            task: ep.task.clone(),
            columns,
        }
    }

    /// `template` with its placeholders filled; a column the episode lacks is an error naming it.
    pub fn render(&self, template: &str) -> Result<String> {
        let mut out = String::with_capacity(template.len());
        let mut rest = template.replace("{task}", &self.task);
        while let Some(at) = rest.find(EPISODE) {
            out.push_str(&rest[..at]);
            let after = &rest[at + EPISODE.len()..];
            let end = after.find('}').unwrap_or(after.len());
            let column = &after[..end];
            let value = self.columns.get(column).ok_or_else(|| {
                Error::invalid(
                    Location::none().episode(self.episode).field(column),
                    format!(
                        "the prompt template {template:?} needs the per-episode string column {column:?}; this \
                         episode has {:?}",
                        self.columns.keys().collect::<Vec<_>>()
                    ),
                )
            })?;
            out.push_str(value);
            rest = after[(end + 1).min(after.len())..].to_string();
        }
        out.push_str(&rest);
        Ok(out)
    }
}

/// Why `template` is not a valid prompt template (`None`: it is): braces only as `{task}` or `{episode:COLUMN}`.
pub fn template_problem(template: &str) -> Option<String> {
    let mut rest = template.replace("{task}", "");
    while let Some(at) = rest.find(EPISODE) {
        let after = &rest[at + EPISODE.len()..];
        match after.find('}') {
            Some(0) | None => {
                return Some(format!(
                    "{template:?}: {{episode:COLUMN}} needs a column name and a closing brace"
                ))
            }
            Some(end) => rest = format!("{}{}", &rest[..at], &after[end + 1..]),
        }
    }
    rest.contains(['{', '}']).then(|| {
        format!("{template:?}: the placeholders are {{task}} and {{episode:COLUMN}} (a per-episode string column)")
    })
}

/// `template` with every placeholder removed: the words a text encoder sees whatever the episode.
pub fn fixed_words(template: &str) -> String {
    let mut rest = template.replace("{task}", "");
    while let Some(at) = rest.find(EPISODE) {
        let after = &rest[at + EPISODE.len()..];
        let end = after.find('}').map_or(after.len(), |e| e + 1);
        rest = format!("{}{}", &rest[..at], &after[end..]);
    }
    rest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> PromptContext {
        PromptContext {
            episode: 4,
            task: "push the red star".into(),
            columns: [(
                "appearance/cam/name".to_string(),
                "wooden tan board".to_string(),
            )]
            .into_iter()
            .collect(),
        }
    }

    #[test]
    fn renders_task_and_episode_columns() {
        let c = ctx();
        assert_eq!(c.render("{task}, clay").unwrap(), "push the red star, clay");
        assert_eq!(
            c.render("{episode:appearance/cam/name} ({task})").unwrap(),
            "wooden tan board (push the red star)"
        );
        assert_eq!(c.render("no placeholder").unwrap(), "no placeholder");
        let err = c
            .render("{episode:appearance/other/name}")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("appearance/other/name") && err.contains("appearance/cam/name"),
            "{err}"
        );
        assert!(err.contains("episode 4"), "{err}");
    }

    #[test]
    fn checks_templates() {
        assert_eq!(template_problem("{task}, night style"), None);
        assert_eq!(template_problem("{episode:a/b/name}, {task}"), None);
        for bad in ["{style}", "{episode:}", "{episode:a", "{task", "a }"] {
            assert!(template_problem(bad).is_some(), "{bad} refused");
        }
        assert_eq!(fixed_words("{episode:a/b} board, {task}"), " board, ");
    }
}
