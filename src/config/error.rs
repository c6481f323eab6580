//! Errors a topology can be refused with. Each names the file, the key path, what is wrong and
//! what to write instead, so a user can fix the file without reading the source.

use std::fmt;
use std::path::PathBuf;

/// One thing wrong with a topology file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", Line(self))]
pub struct ConfigError {
    /// The topology file, as the user named it.
    pub file: PathBuf,
    /// Key path such as `group[hub].member[hub-1].listener[0].url`; empty for the whole file.
    pub key: String,
    /// What is wrong.
    pub problem: String,
    /// What to do about it.
    pub fix: String,
}

struct Line<'a>(&'a ConfigError);

impl fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.0;
        if e.key.is_empty() {
            write!(f, "{}: {}; {}", e.file.display(), e.problem, e.fix)
        } else {
            write!(
                f,
                "{}: {}: {}; {}",
                e.file.display(),
                e.key,
                e.problem,
                e.fix
            )
        }
    }
}

/// Every problem found in a topology (never empty). Displays one error per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", Lines(&self.errors))]
pub struct TopologyError {
    pub errors: Vec<ConfigError>,
}

struct Lines<'a>(&'a [ConfigError]);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A value refused by a parser that does not know where the value came from; the caller adds
/// the file and key to make a [`ConfigError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub problem: String,
    pub fix: String,
}

impl Refusal {
    pub fn new(problem: impl Into<String>, fix: impl Into<String>) -> Refusal {
        Refusal {
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(key: &str) -> ConfigError {
        ConfigError {
            file: PathBuf::from("t.toml"),
            key: key.to_string(),
            problem: "is wrong".to_string(),
            fix: "do this".to_string(),
        }
    }

    #[test]
    fn displays_file_key_problem_and_fix() {
        assert_eq!(
            error("mesh.name").to_string(),
            "t.toml: mesh.name: is wrong; do this"
        );
        assert_eq!(error("").to_string(), "t.toml: is wrong; do this");
    }

    #[test]
    fn topology_error_is_one_line_per_error() {
        let all = TopologyError {
            errors: vec![error("a"), error("b")],
        };
        assert_eq!(
            all.to_string(),
            "t.toml: a: is wrong; do this\nt.toml: b: is wrong; do this"
        );
    }
}
