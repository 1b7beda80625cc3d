//! The read-only gate: command patterns from policy, and (later) the
//! parser and matcher that decide what may run on a target.

use std::fmt;

/// One token of an allowlist pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// A word that must appear as it is.
    Literal(String),
    /// A non-negative integer.
    Int,
    /// Letters, digits and `._@:-`, no leading `-`.
    Word,
    /// Any one argument that does not start with `-`.
    Arg,
    /// A path glob: starts with `/`; `*` within a segment, `**` across.
    Path(String),
}

/// A parsed `commands` (or `filters`) entry.
#[derive(Debug, Clone)]
pub struct CommandPattern {
    source: String,
    tokens: Vec<Token>,
}

/// Why a pattern does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatternError {
    #[error("is empty")]
    Empty,
    #[error("unknown placeholder {0:?} (known: <int>, <word>, <arg>)")]
    UnknownPlaceholder(String),
    #[error("the command must be a literal word, not {0:?}")]
    CommandNotLiteral(String),
    #[error("path glob {0:?} holds '..', a NUL or a control character")]
    BadGlob(String),
}

impl CommandPattern {
    pub fn parse(s: &str) -> Result<CommandPattern, PatternError> {
        let mut tokens = Vec::new();
        for word in s.split_whitespace() {
            let t = if word.starts_with('<') && word.ends_with('>') {
                match word {
                    "<int>" => Token::Int,
                    "<word>" => Token::Word,
                    "<arg>" => Token::Arg,
                    other => return Err(PatternError::UnknownPlaceholder(other.into())),
                }
            } else if word.starts_with('/') {
                if word.split('/').any(|seg| seg == "..") || word.chars().any(|c| c.is_control()) {
                    return Err(PatternError::BadGlob(word.into()));
                }
                Token::Path(word.into())
            } else {
                Token::Literal(word.into())
            };
            tokens.push(t);
        }
        match tokens.first() {
            None => return Err(PatternError::Empty),
            Some(Token::Literal(_)) => {}
            Some(_) => {
                return Err(PatternError::CommandNotLiteral(
                    s.split_whitespace().next().unwrap_or("").into(),
                ))
            }
        }
        Ok(CommandPattern {
            source: s.to_string(),
            tokens,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    /// A warning for the policy author when this pattern admits a tool
    /// known to run code, write files or read other files.
    pub fn danger(&self) -> Option<String> {
        None
    }
}

impl fmt::Display for CommandPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}
