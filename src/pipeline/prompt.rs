//! Prompt templates of pipeline targets: `{task}` is the episode's task, `{episode:COLUMN}` the episode's value of a
//! per-episode string column (LeRobot v3.0 `meta/episodes/…`; e.g. the LanguageTable generator's
//! `{episode:appearance/observation.images.appearance_0/name}`, so that a target renders the look one of the
//! episode's own cameras shows, and `vadapt eval --reference-key` can score it against that camera).

use std::collections::BTreeMap;

use crate::episode::Episode;
use crate::error::{Error, Location, Result};

/// One piece of a parsed template.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Piece<'a> {
    Text(&'a str),
    Task,
    Column(&'a str),
}

/// `template` as text and placeholders; the error says why it is no valid template: braces only as `{task}` or
/// `{episode:COLUMN}`. Parsed once, so a task or column value that contains braces is never read as a placeholder.
fn parse(template: &str) -> std::result::Result<Vec<Piece<'_>>, String> {
    const TASK: &str = "{task}";
    const EPISODE: &str = "{episode:";
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(at) = rest.find(['{', '}']) {
        if at > 0 {
            pieces.push(Piece::Text(&rest[..at]));
        }
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix(TASK) {
            pieces.push(Piece::Task);
            rest = after;
        } else if let Some(after) = tail.strip_prefix(EPISODE) {
            match after.find(['{', '}']) {
                Some(end) if end > 0 && after.as_bytes()[end] == b'}' => {
                    pieces.push(Piece::Column(&after[..end]));
                    rest = &after[end + 1..];
                }
                _ => {
                    return Err(format!(
                        "{template:?}: {{episode:COLUMN}} needs a column name and a closing brace"
                    ))
                }
            }
        } else {
            return Err(format!(
                "{template:?}: the placeholders are {{task}} and {{episode:COLUMN}} (a per-episode string column)"
            ));
        }
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest));
    }
    Ok(pieces)
}

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
        let loc = || Location::none().episode(self.episode);
        let pieces =
            parse(template).map_err(|problem| Error::invalid(loc().field("prompt"), problem))?;
        let mut out = String::with_capacity(template.len());
        for piece in pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Task => out.push_str(&self.task),
                Piece::Column(column) => out.push_str(self.columns.get(column).ok_or_else(|| {
                    Error::invalid(
                        loc().field(column),
                        format!(
                            "the prompt template {template:?} needs the per-episode string column {column:?}; \
                             this episode has {:?}",
                            self.columns.keys().collect::<Vec<_>>()
                        ),
                    )
                })?),
            }
        }
        Ok(out)
    }
}

/// Why `template` is not a valid prompt template (`None`: it is): braces only as `{task}` or `{episode:COLUMN}`.
pub fn template_problem(template: &str) -> Option<String> {
    parse(template).err()
}

/// `template` with every placeholder removed: the words a text encoder sees whatever the episode (an invalid
/// template, refused by the config's checks before this is asked, is returned whole).
pub fn fixed_words(template: &str) -> String {
    match parse(template) {
        Ok(pieces) => pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Text(t) => Some(*t),
                _ => None,
            })
            .collect(),
        Err(_) => template.to_string(),
    }
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
        // Values are never read as placeholders.
        let braces = PromptContext {
            task: "push {episode:x}".into(),
            ..c
        };
        assert_eq!(braces.render("{task}!").unwrap(), "push {episode:x}!");
    }

    #[test]
    fn checks_templates() {
        assert_eq!(template_problem("{task}, night style"), None);
        assert_eq!(template_problem("{episode:a/b/name}, {task}"), None);
        for bad in [
            "{style}",
            "{episode:}",
            "{episode:a",
            "{episode:a{b}",
            "{task",
            "a }",
        ] {
            assert!(template_problem(bad).is_some(), "{bad} refused");
        }
        assert_eq!(fixed_words("{episode:a/b} board, {task}"), " board, ");
    }
}
