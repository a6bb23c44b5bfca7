//! sentence-transformers prompts: named texts put before an input (`"query": "query: "`), from the
//! model's `config_sentence_transformers.json` (`prompts`, `default_prompt_name`), as TEI's
//! `prompt_name` applies them.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{ApiError, Batch};

/// A model's prompts; none when its configuration has none.
#[derive(Default, Deserialize)]
pub struct Prompts {
    #[serde(default)]
    prompts: BTreeMap<String, String>,
    /// Applied when a request names no prompt.
    #[serde(default)]
    default_prompt_name: Option<String>,
}

impl Prompts {
    /// Reads `path`; a missing file means no prompts, an unreadable or malformed one is an error.
    pub fn load(path: &str) -> Result<Prompts, ApiError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Prompts::default()),
            Err(e) => return Err(ApiError::internal(format!("cannot read prompts {path}: {e}"))),
        };
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::internal(format!("{path} is not a sentence-transformers configuration: {e}"))
        })
    }

    /// The texts with the named prompt (or the default one) put in front. Token ids are taken
    /// as they are: a prompt applies to text only.
    pub fn apply(&self, name: Option<&str>, batch: Batch) -> Result<Batch, ApiError> {
        match batch {
            Batch::Texts(texts) => self.apply_to_texts(name, texts).map(Batch::Texts),
            ids => {
                self.prompt(name)?;
                Ok(ids)
            }
        }
    }

    /// `apply` for texts alone.
    pub fn apply_to_texts(&self, name: Option<&str>, texts: Vec<String>) -> Result<Vec<String>, ApiError> {
        Ok(match self.prompt(name)? {
            Some(prompt) => texts.into_iter().map(|t| format!("{prompt}{t}")).collect(),
            None => texts,
        })
    }

    /// The prompt `name` (or the default one) stands for; none when neither is set.
    fn prompt(&self, name: Option<&str>) -> Result<Option<&str>, ApiError> {
        let Some(name) = name.or(self.default_prompt_name.as_deref()) else { return Ok(None) };
        match self.prompts.get(name) {
            Some(prompt) => Ok(Some(prompt)),
            None => {
                let known: Vec<&str> = self.prompts.keys().map(String::as_str).collect();
                Err(ApiError::validation(if known.is_empty() {
                    format!("prompt {name:?} is not defined: the model's configuration has no prompts")
                } else {
                    format!("prompt {name:?} is not defined; the model's prompts are {known:?}")
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompts(json: &str) -> Prompts {
        serde_json::from_str(json).unwrap()
    }

    fn texts(batch: Batch) -> Vec<String> {
        match batch {
            Batch::Texts(texts) => texts,
            Batch::Ids(_) => panic!("texts expected"),
        }
    }

    #[test]
    fn named_and_default_prompts_go_in_front() {
        let p = prompts(
            r#"{"prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": "passage"}"#,
        );
        let batch = || Batch::Texts(vec!["a".into()]);
        assert_eq!(texts(p.apply(Some("query"), batch()).unwrap()), ["query: a"]);
        assert_eq!(texts(p.apply(None, batch()).unwrap()), ["passage: a"]);
        assert!(p.apply(Some("nope"), batch()).is_err());
        let Batch::Ids(ids) = p.apply(Some("query"), Batch::Ids(vec![vec![1, 2]])).unwrap() else { panic!() };
        assert_eq!(ids, [vec![1, 2]]);
    }

    #[test]
    fn no_prompts_means_names_are_refused_and_texts_kept() {
        let p = prompts(r#"{"__version__": {"sentence_transformers": "2.0.0"}}"#);
        assert_eq!(texts(p.apply(None, Batch::Texts(vec!["a".into()])).unwrap()), ["a"]);
        let error = p.apply(Some("query"), Batch::Texts(vec!["a".into()])).err().unwrap();
        assert!(error.message().contains("no prompts"), "{}", error.message());
    }
}
