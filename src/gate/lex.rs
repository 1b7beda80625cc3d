//! Split a command line the way POSIX `sh` would split it into words, but
//! refuse everything `sh` would do beyond splitting: operators, expansions,
//! redirections, globs, comments and control characters. The one operator
//! kept is `|`, which separates pipeline stages.
//!
//! Written by hand because the gate must know whether each metacharacter
//! was quoted; `shell-words` splits words but discards exactly that.

use std::fmt;

/// Why a command line was refused before any pattern was consulted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LexError {
    Empty,
    EmptyStage,
    Operator(String),
    Expansion(char),
    Glob(char),
    Comment,
    ControlChar(char),
    Unterminated(char),
    TrailingBackslash,
}

impl fmt::Display for LexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LexError::Empty => write!(f, "empty command"),
            LexError::EmptyStage => write!(f, "a pipeline stage is empty"),
            LexError::Operator(op) => write!(
                f,
                "shell operator {op:?} is not allowed (no shell runs your command)"
            ),
            LexError::Expansion(c) => write!(f, "shell expansion with {c:?} is not allowed"),
            LexError::Glob(c) => write!(
                f,
                "wildcard {c:?} is not expanded; name files explicitly or quote it"
            ),
            LexError::Comment => write!(f, "'#' comments are not allowed"),
            LexError::ControlChar(c) => {
                write!(f, "control character {} is not allowed", c.escape_unicode())
            }
            LexError::Unterminated(q) => write!(f, "unterminated {q} quote"),
            LexError::TrailingBackslash => write!(f, "trailing backslash"),
        }
    }
}

/// Characters that make what is shown differ from what runs: Unicode's
/// default-ignorable code points (zero-width and bidirectional formatting
/// characters, the soft hyphen, the Arabic letter mark, Hangul fillers,
/// variation selectors, tags; DerivedCoreProperties.txt, Unicode 15) and
/// the line and paragraph separators. The whole property, not the few an
/// adversarial review tried (U+061C, U+00AD and U+2028 got through when
/// only U+200B–U+200F, U+202A–U+202E, U+2060–U+2069 and U+FEFF were
/// refused). Written out because no well-kept crate exposes the property
/// on its own.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00ad}' | '\u{034f}' | '\u{061c}' | '\u{115f}'..='\u{1160}' | '\u{17b4}'..='\u{17b5}'
        | '\u{180b}'..='\u{180f}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}' | '\u{3164}' | '\u{fe00}'..='\u{fe0f}' | '\u{feff}'
        | '\u{ffa0}' | '\u{fff0}'..='\u{fff8}' | '\u{1bca0}'..='\u{1bca3}'
        | '\u{1d173}'..='\u{1d17a}' | '\u{e0000}'..='\u{e0fff}')
}

/// Split `line` into pipeline stages of words.
pub fn split(line: &str) -> Result<Vec<Vec<String>>, LexError> {
    if let Some(c) = line.chars().find(|c| c.is_control() || is_invisible(*c)) {
        // Tabs included: a tab is whitespace to sh, but nothing a person
        // types needs one and refusing keeps the rule simple.
        return Err(LexError::ControlChar(c));
    }
    let mut stages: Vec<Vec<String>> = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    // A word exists once any character or quote was seen (`''` is a word).
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        None => return Err(LexError::Unterminated('\'')),
                        Some('\'') => break,
                        Some(x) => word.push(x),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        None => return Err(LexError::Unterminated('"')),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            None => return Err(LexError::Unterminated('"')),
                            Some(x @ ('$' | '`' | '"' | '\\')) => word.push(x),
                            Some(x) => {
                                word.push('\\');
                                word.push(x);
                            }
                        },
                        Some(x @ ('$' | '`')) => return Err(LexError::Expansion(x)),
                        Some(x) => word.push(x),
                    }
                }
            }
            '\\' => match chars.next() {
                None => return Err(LexError::TrailingBackslash),
                Some(x) => {
                    in_word = true;
                    word.push(x);
                }
            },
            '|' => {
                if chars.peek() == Some(&'|') {
                    return Err(LexError::Operator("||".into()));
                }
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
                if words.is_empty() {
                    return Err(LexError::EmptyStage);
                }
                stages.push(std::mem::take(&mut words));
            }
            ';' | '&' | '<' | '>' | '(' | ')' => {
                let mut op = c.to_string();
                if let Some(&n) = chars.peek() {
                    if matches!(
                        (c, n),
                        ('&', '&') | ('>', '>') | ('<', '<') | ('>', '&') | ('<', '&') | (';', ';')
                    ) {
                        op.push(n);
                    }
                }
                return Err(LexError::Operator(op));
            }
            '$' | '`' => return Err(LexError::Expansion(c)),
            '*' | '?' | '[' => return Err(LexError::Glob(c)),
            '#' if !in_word => return Err(LexError::Comment),
            other => {
                in_word = true;
                word.push(other);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    if words.is_empty() {
        return Err(if stages.is_empty() {
            LexError::Empty
        } else {
            LexError::EmptyStage
        });
    }
    stages.push(words);
    Ok(stages)
}

/// Quote one word for POSIX `sh` so it stays exactly one literal word.
pub fn quote(word: &str) -> String {
    let mut s = String::with_capacity(word.len() + 2);
    s.push('\'');
    for c in word.chars() {
        if c == '\'' {
            s.push_str("'\\''");
        } else {
            s.push(c);
        }
    }
    s.push('\'');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Vec<Vec<String>> {
        split(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn words_and_quotes() {
        assert_eq!(
            ok("grep 'a b' /var/log/x"),
            vec![vec!["grep", "a b", "/var/log/x"]]
        );
        assert_eq!(
            ok(r#"grep "it's \"x\"" f"#),
            vec![vec!["grep", "it's \"x\"", "f"]]
        );
        assert_eq!(ok(r"echo a\ b ''"), vec![vec!["echo", "a b", ""]]);
        assert_eq!(
            ok("tail -n 5 f | grep x"),
            vec![vec!["tail", "-n", "5", "f"], vec!["grep", "x"]]
        );
        assert_eq!(ok("grep 'a|b;c' f"), vec![vec!["grep", "a|b;c", "f"]]);
        assert_eq!(ok("a#b"), vec![vec!["a#b"]]);
    }

    #[test]
    fn shell_syntax_is_refused() {
        for (line, want) in [
            ("cat f; touch x", LexError::Operator(";".into())),
            ("id && touch x", LexError::Operator("&&".into())),
            ("id || touch x", LexError::Operator("||".into())),
            ("cat f > x", LexError::Operator(">".into())),
            ("cat < x", LexError::Operator("<".into())),
            ("id &", LexError::Operator("&".into())),
            ("(id)", LexError::Operator("(".into())),
            ("cat $(touch x)", LexError::Expansion('$')),
            ("cat \"$(touch x)\"", LexError::Expansion('$')),
            ("cat `touch x`", LexError::Expansion('`')),
            ("cat ${HOME}", LexError::Expansion('$')),
            ("cat /var/*", LexError::Glob('*')),
            ("id # x", LexError::Comment),
            ("id\ntouch x", LexError::ControlChar('\n')),
            ("id\rtouch", LexError::ControlChar('\r')),
            ("id\0", LexError::ControlChar('\0')),
            ("id\u{061c}", LexError::ControlChar('\u{061c}')),
            ("c\u{00ad}at f", LexError::ControlChar('\u{00ad}')),
            ("id\u{2028}x", LexError::ControlChar('\u{2028}')),
            ("id\u{2066}", LexError::ControlChar('\u{2066}')),
            ("id\u{e0041}", LexError::ControlChar('\u{e0041}')),
            ("id\u{fe0f}", LexError::ControlChar('\u{fe0f}')),
            ("cat 'x", LexError::Unterminated('\'')),
            ("| id", LexError::EmptyStage),
            ("id |", LexError::EmptyStage),
            ("   ", LexError::Empty),
        ] {
            assert_eq!(split(line), Err(want), "{line:?}");
        }
    }

    #[test]
    fn quoting_round_trips_through_sh() {
        for w in [
            "plain", "a b", "it's", "'", "''", "$(x)", "`x`", "a\\b", "-n", ";", "\"", "!x",
        ] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", quote(w)))
                .output()
                .expect("sh runs");
            assert_eq!(String::from_utf8_lossy(&out.stdout), w);
        }
    }
}
