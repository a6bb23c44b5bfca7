//! What clients send to be computed on: texts or token ids, one or many, checked before any
//! tokenization or inference.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::ApiError;

/// One text or a batch of texts, or token ids (`"inputs"` of TEI requests, `"input"` of OpenAI's).
#[derive(Debug, PartialEq)]
pub enum Inputs {
    One(String),
    Many(Vec<String>),
    /// One sequence of token ids, taken as the model's input as it is (no special tokens added).
    Ids(Vec<u32>),
    ManyIds(Vec<Vec<u32>>),
}

/// Checked inputs, ready to encode.
pub enum Batch {
    Texts(Vec<String>),
    Ids(Vec<Vec<u32>>),
}

impl Batch {
    /// Number of inputs.
    pub fn len(&self) -> usize {
        match self {
            Batch::Texts(texts) => texts.len(),
            Batch::Ids(ids) => ids.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The batch in parts of at most `size` inputs, in order.
    pub fn parts(&self, size: usize) -> Vec<Batch> {
        match self {
            Batch::Texts(texts) => texts.chunks(size).map(|c| Batch::Texts(c.to_vec())).collect(),
            Batch::Ids(ids) => ids.chunks(size).map(|c| Batch::Ids(c.to_vec())).collect(),
        }
    }
}

const SHAPES: &str = "a string, a list of strings, a list of token ids or a list of token-id lists";

impl<'de> Deserialize<'de> for Inputs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Inputs, D::Error> {
        Inputs::from_value(Value::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

impl Inputs {
    /// The shapes accepted, with a message naming the first thing that does not fit.
    fn from_value(value: Value) -> Result<Inputs, Unrecognised> {
        let items = match value {
            Value::String(text) => return Ok(Inputs::One(text)),
            Value::Array(items) => items,
            other => return Err(Unrecognised(format!("expected {SHAPES}, got {}", kind(&other)))),
        };
        match items.first() {
            None => Ok(Inputs::Many(Vec::new())),
            Some(Value::String(_)) => items
                .into_iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(text) => Ok(text),
                    other => Err(Unrecognised(format!(
                        "item {i} is {}, expected a string like the first",
                        kind(&other)
                    ))),
                })
                .collect::<Result<_, _>>()
                .map(Inputs::Many),
            Some(Value::Number(_)) => ids(&items, "").map(Inputs::Ids),
            Some(Value::Array(_)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::Array(inner) => ids(inner, &format!(" of item {i}")),
                    other => Err(Unrecognised(format!(
                        "item {i} is {}, expected a list of token ids",
                        kind(other)
                    ))),
                })
                .collect::<Result<_, _>>()
                .map(Inputs::ManyIds),
            Some(other) => Err(Unrecognised(format!("expected {SHAPES}, got a list of {}", kind(other)))),
        }
    }

    /// Whether the client sent a list (answers then come as a list too).
    pub fn is_batch(&self) -> bool {
        matches!(self, Inputs::Many(_) | Inputs::ManyIds(_))
    }

    /// The inputs, checked: not empty, at most `max_inputs`, no blank text, no control
    /// characters other than tab, newline and carriage return (rejected, not stripped), no empty
    /// token-id list.
    pub fn validate(self, max_inputs: usize) -> Result<Batch, ApiError> {
        let batch = match self {
            Inputs::One(text) => Batch::Texts(vec![text]),
            Inputs::Many(texts) => Batch::Texts(texts),
            Inputs::Ids(ids) => Batch::Ids(vec![ids]),
            Inputs::ManyIds(ids) => Batch::Ids(ids),
        };
        if batch.is_empty() {
            return Err(ApiError::validation("`inputs` must not be empty".into()));
        }
        if batch.len() > max_inputs {
            return Err(ApiError::validation(format!(
                "{} inputs sent, at most {max_inputs} are allowed per request",
                batch.len()
            )));
        }
        match &batch {
            Batch::Texts(texts) => {
                for (i, text) in texts.iter().enumerate() {
                    check_text(text, &format!("input {i}"))?;
                }
            }
            Batch::Ids(ids) => {
                if let Some(i) = ids.iter().position(Vec::is_empty) {
                    return Err(ApiError::validation(format!("input {i} has no token ids")));
                }
            }
        }
        Ok(batch)
    }

    /// Like `validate`, for handlers that take texts only.
    pub fn validate_texts(self, max_inputs: usize) -> Result<Vec<String>, ApiError> {
        match self.validate(max_inputs)? {
            Batch::Texts(texts) => Ok(texts),
            Batch::Ids(_) => Err(ApiError::validation("this route takes texts, not token ids".into())),
        }
    }
}

/// A text worth computing on: not blank, no control characters other than tab, newline and
/// carriage return (rejected, not stripped). `what` names it in the error.
pub fn check_text(text: &str, what: &str) -> Result<(), ApiError> {
    if text.trim().is_empty() {
        return Err(ApiError::validation(format!("{what} is empty")));
    }
    if let Some(c) = text.chars().find(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r')) {
        return Err(ApiError::validation(format!(
            "{what} contains the control character U+{:04X}",
            c as u32
        )));
    }
    Ok(())
}

fn ids(items: &[Value], whose: &str) -> Result<Vec<u32>, Unrecognised> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.as_u64().and_then(|id| u32::try_from(id).ok()).ok_or_else(|| {
                Unrecognised(format!("token id {i}{whose} is {item}, not a non-negative 32-bit integer"))
            })
        })
        .collect()
}

/// Inputs in none of the accepted shapes: what does not fit, for serde's error message.
#[derive(Debug, PartialEq)]
struct Unrecognised(String);

impl std::fmt::Display for Unrecognised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<Inputs, String> {
        Inputs::from_value(value).map_err(|e| e.to_string())
    }

    #[test]
    fn every_shape_is_recognised() {
        assert_eq!(parse(json!("a")), Ok(Inputs::One("a".into())));
        assert_eq!(parse(json!(["a", "b"])), Ok(Inputs::Many(vec!["a".into(), "b".into()])));
        assert_eq!(parse(json!([101, 7592, 102])), Ok(Inputs::Ids(vec![101, 7592, 102])));
        assert_eq!(parse(json!([[101], [102, 0]])), Ok(Inputs::ManyIds(vec![vec![101], vec![102, 0]])));
        assert_eq!(parse(json!([])), Ok(Inputs::Many(vec![])));
    }

    #[test]
    fn mixed_or_wrong_items_are_named() {
        assert!(parse(json!(["a", 1])).unwrap_err().contains("item 1"));
        assert!(parse(json!([1, -2])).unwrap_err().contains("token id 1 is -2"));
        assert!(parse(json!([1, 4294967296u64])).unwrap_err().contains("32-bit"));
        assert!(parse(json!([[1], [2.5]])).unwrap_err().contains("token id 0 of item 1"));
        assert!(parse(json!({"text": "a"})).unwrap_err().contains("an object"));
        assert!(parse(json!([null])).unwrap_err().contains("null"));
    }
}
