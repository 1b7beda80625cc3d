//! Allowlist patterns (`commands` and `filters` in a role): tokens matched
//! against a parsed argument vector, in order. See DESIGN.md for the
//! language: literals, `<int>`, `<word>`, `<arg>` and path globs.

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
    #[error("must start with a command name (letters, digits, '._+-'), not {0:?}")]
    BadCommand(String),
    #[error("path glob {0:?} holds '..', '.' or a control character")]
    BadGlob(String),
    #[error("token {0:?} holds a shell metacharacter or control character")]
    BadLiteral(String),
}

/// Why an argument vector does not match, with the most useful detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// Nothing at all: the command name differs.
    Command,
    /// Right command, wrong arguments.
    Arguments,
    /// A path argument that can never be allowed.
    BadPath(String),
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
                let bad_segment = word.split('/').any(|seg| seg == ".." || seg == ".");
                if bad_segment || word.chars().any(char::is_control) {
                    return Err(PatternError::BadGlob(word.into()));
                }
                Token::Path(word.into())
            } else {
                if word
                    .chars()
                    .any(|c| c.is_control() || "'\"`$;&|<>()\\".contains(c))
                {
                    return Err(PatternError::BadLiteral(word.into()));
                }
                Token::Literal(word.into())
            };
            tokens.push(t);
        }
        match tokens.first() {
            None => return Err(PatternError::Empty),
            Some(Token::Literal(cmd)) if is_command_name(cmd) => {}
            Some(_) => {
                return Err(PatternError::BadCommand(
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
        super::danger::tool_warning(self.command()).map(str::to_string)
    }

    /// The command name (first token).
    pub fn command(&self) -> &str {
        match self.tokens.first() {
            Some(Token::Literal(c)) => c,
            _ => "",
        }
    }

    /// Match `argv`; on success return it with paths normalised (what runs
    /// is exactly what matched).
    pub fn matches(&self, argv: &[String]) -> Result<Vec<String>, Mismatch> {
        if argv.first().map(String::as_str) != Some(self.command()) {
            return Err(Mismatch::Command);
        }
        if argv.len() != self.tokens.len() {
            return Err(Mismatch::Arguments);
        }
        let mut out = Vec::with_capacity(argv.len());
        for (tok, arg) in self.tokens.iter().zip(argv) {
            let ok = match tok {
                Token::Literal(l) => l == arg,
                Token::Int => {
                    !arg.is_empty() && arg.len() <= 18 && arg.bytes().all(|b| b.is_ascii_digit())
                }
                Token::Word => {
                    !arg.is_empty()
                        && !arg.starts_with('-')
                        && arg
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "._@:-".contains(c))
                }
                Token::Arg => !arg.starts_with('-'),
                Token::Path(glob) => {
                    let norm = normalise_path(arg).map_err(Mismatch::BadPath)?;
                    if !glob_match(glob, &norm) {
                        return Err(Mismatch::Arguments);
                    }
                    out.push(norm);
                    continue;
                }
            };
            if !ok {
                return Err(Mismatch::Arguments);
            }
            out.push(arg.clone());
        }
        Ok(out)
    }
}

impl fmt::Display for CommandPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// A plain program name or absolute path, never an option.
pub fn is_command_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+-/".contains(c))
}

/// Normalise an absolute path: collapse `//` and `/./`; refuse `..`,
/// relative paths, NUL and control characters.
pub fn normalise_path(p: &str) -> Result<String, String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} is not an absolute path"));
    }
    if p.chars().any(char::is_control) {
        return Err("path holds a control character".into());
    }
    let mut segs = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => return Err("path holds '..'".into()),
            s => segs.push(s),
        }
    }
    Ok(format!("/{}", segs.join("/")))
}

/// Match a normalised path against a glob: `*` within a segment, `**`
/// across any number of segments (zero included).
pub fn glob_match(glob: &str, path: &str) -> bool {
    let g: Vec<&str> = glob.split('/').filter(|s| !s.is_empty()).collect();
    let p: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    wildcard(&g, &p, |g| *g == "**", |g, p| match_segment(g, p))
}

/// `*` matches any run of characters within one segment (or within a
/// target name, for policy selectors).
pub fn match_segment(glob: &str, s: &str) -> bool {
    let g: Vec<char> = glob.chars().collect();
    let t: Vec<char> = s.chars().collect();
    wildcard(&g, &t, |c| *c == '*', |a, b| a == b)
}

/// Match `items` against `pattern`, where an element for which `is_star`
/// holds matches any run of items (none included) and every other element
/// matches exactly one item for which `one` holds.
///
/// Greedy, going back only to the latest star: a match found for the part
/// after that star at the earliest place leaves the most for the rest, so
/// the earlier stars never need another try. At most `pattern.len() *
/// items.len()` steps, however many stars: selectors come from users
/// (`request --targets`), and trying every split of every star, as a plain
/// recursive matcher does, is exponential in their number.
fn wildcard<P, I>(
    pattern: &[P],
    items: &[I],
    is_star: impl Fn(&P) -> bool,
    one: impl Fn(&P, &I) -> bool,
) -> bool {
    let (mut pi, mut ii) = (0, 0);
    // The latest star seen, and the first item it does not yet cover.
    let mut back: Option<(usize, usize)> = None;
    while ii < items.len() {
        match pattern.get(pi) {
            Some(p) if is_star(p) => {
                back = Some((pi, ii));
                pi += 1;
            }
            Some(p) if one(p, &items[ii]) => {
                pi += 1;
                ii += 1;
            }
            _ => match back {
                Some((star, covered)) => {
                    back = Some((star, covered + 1));
                    pi = star + 1;
                    ii = covered + 1;
                }
                None => return false,
            },
        }
    }
    pattern[pi..].iter().all(is_star)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parse_errors() {
        assert_eq!(CommandPattern::parse("").unwrap_err(), PatternError::Empty);
        assert!(matches!(
            CommandPattern::parse("cat <file>"),
            Err(PatternError::UnknownPlaceholder(_))
        ));
        assert!(matches!(
            CommandPattern::parse("<arg> x"),
            Err(PatternError::BadCommand(_))
        ));
        assert!(matches!(
            CommandPattern::parse("-x y"),
            Err(PatternError::BadCommand(_))
        ));
        assert!(matches!(
            CommandPattern::parse("cat /var/../etc"),
            Err(PatternError::BadGlob(_))
        ));
        assert!(matches!(
            CommandPattern::parse("cat a;b"),
            Err(PatternError::BadLiteral(_))
        ));
    }

    #[test]
    fn placeholders() {
        let p = CommandPattern::parse("journalctl -u <word> -n <int>").expect("parses");
        assert!(p.matches(&argv("journalctl -u app.service -n 50")).is_ok());
        assert!(p.matches(&argv("journalctl -u -app -n 50")).is_err());
        assert!(p.matches(&argv("journalctl -u app -n -5")).is_err());
        assert!(p
            .matches(&argv("journalctl -u app -n 5 --file=/x"))
            .is_err());
        assert_eq!(p.matches(&argv("tail -n 5")), Err(Mismatch::Command));
        let g = CommandPattern::parse("grep <arg> /var/log/**").expect("parses");
        assert!(g
            .matches(&["grep".into(), "two words".into(), "/var/log/a".into()])
            .is_ok());
        assert!(g.matches(&argv("grep -f/etc/passwd /var/log/a")).is_err());
    }

    /// The recursive matcher the linear one replaced: the reference.
    fn reference_segment(glob: &str, s: &str) -> bool {
        match glob.split_once('*') {
            None => glob == s,
            Some((head, rest)) => {
                let Some(tail) = s.strip_prefix(head) else {
                    return false;
                };
                (0..=tail.len())
                    .filter(|i| tail.is_char_boundary(*i))
                    .any(|i| reference_segment(rest, &tail[i..]))
            }
        }
    }

    fn reference_segments(g: &[&str], p: &[&str]) -> bool {
        match g.split_first() {
            None => p.is_empty(),
            Some((&"**", rest)) => (0..=p.len()).any(|i| reference_segments(rest, &p[i..])),
            Some((seg, rest)) => match p.split_first() {
                Some((first, prest)) => {
                    reference_segment(seg, first) && reference_segments(rest, prest)
                }
                None => false,
            },
        }
    }

    proptest::proptest! {
        #[test]
        fn linear_matching_agrees_with_the_recursive_one(
            glob in "[ab*é]{0,8}",
            s in "[abé]{0,8}",
            pg in "(/(\\*\\*|[ab*]{0,3})){0,5}",
            pp in "(/[ab]{0,2}){0,6}",
        ) {
            proptest::prop_assert_eq!(match_segment(&glob, &s), reference_segment(&glob, &s));
            let g: Vec<&str> = pg.split('/').filter(|s| !s.is_empty()).collect();
            let p: Vec<&str> = pp.split('/').filter(|s| !s.is_empty()).collect();
            proptest::prop_assert_eq!(glob_match(&pg, &pp), reference_segments(&g, &p));
        }
    }

    /// Found while writing the policy fuzz target: `request --targets` with
    /// many `*` took time exponential in their number (15 took minutes).
    #[test]
    fn many_stars_match_in_linear_time() {
        let t = std::time::Instant::now();
        let name = "db-replica.internal.example-0123456789-0123456789-0123456789";
        assert!(!match_segment(&format!("{}Z", "*".repeat(200)), name));
        assert!(match_segment(&"*".repeat(200), name));
        assert!(!match_segment(&"*a".repeat(100), &"a".repeat(64)));
        let path = format!("/{}", "a/".repeat(200));
        assert!(!glob_match(&format!("{}/b", "/**".repeat(100)), &path));
        assert!(
            t.elapsed() < std::time::Duration::from_secs(1),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn paths() {
        let p = CommandPattern::parse("cat /var/log/app/**").expect("parses");
        assert_eq!(
            p.matches(&argv("cat /var/log/app//a/./b.log")),
            Ok(argv("cat /var/log/app/a/b.log"))
        );
        assert!(matches!(
            p.matches(&argv("cat /var/log/app/../../../etc/passwd")),
            Err(Mismatch::BadPath(_))
        ));
        assert!(p.matches(&argv("cat /etc/passwd")).is_err());
        assert!(p.matches(&argv("cat /var/log/application.log")).is_err());
        assert!(p.matches(&argv("cat var/log/app/x")).is_err());
        let one = CommandPattern::parse("tail /var/log/*.log").expect("parses");
        assert!(one.matches(&argv("tail /var/log/syslog.log")).is_ok());
        assert!(one.matches(&argv("tail /var/log/sub/syslog.log")).is_err());
        assert!(one.matches(&argv("tail /var/log/syslog")).is_err());
    }
}
