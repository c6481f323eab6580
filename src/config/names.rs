//! Names of the things a topology declares: the mesh, its groups, members and connectors.
//!
//! Every name is 1–64 characters of `[A-Za-z0-9_.-]` starting with a letter or digit, so it
//! is safe in a file path, a ZooKeeper znode, a Prometheus label and a log line without
//! quoting. Parsing is the only way to build one.

use std::fmt;
use std::sync::Arc;

/// Longest name accepted, in characters (all of them ASCII).
pub const MAX_NAME_LEN: usize = 64;

/// What to write instead of a bad name; shared by every error about one.
pub(crate) const NAME_FIX: &str =
    "use 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit, e.g. \"hub-1\"";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a valid name: {reason}")]
pub struct InvalidName {
    pub text: String,
    pub reason: &'static str,
}

fn check_name(text: &str) -> Result<(), InvalidName> {
    let refuse = |reason| {
        Err(InvalidName {
            text: text.to_string(),
            reason,
        })
    };
    let Some(first) = text.chars().next() else {
        return refuse("it is empty");
    };
    if text.chars().count() > MAX_NAME_LEN {
        return refuse("it is longer than 64 characters");
    }
    if !first.is_ascii_alphanumeric() {
        return refuse("it must start with a letter or digit");
    }
    if !text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return refuse("only letters, digits, '_', '.' and '-' are allowed");
    }
    Ok(())
}

/// True when `text` would parse as a name; used to label list elements in error paths.
pub(crate) fn is_valid_name(text: &str) -> bool {
    check_name(text).is_ok()
}

/// How key paths show list elements: an element whose name is valid and unique in `names` is
/// shown by its name (`Some`), any other by its index (`None`, the caller knows the index).
pub(crate) fn name_labels(names: &[Option<&str>]) -> Vec<Option<String>> {
    names
        .iter()
        .map(|name| {
            name.filter(|n| {
                is_valid_name(n) && names.iter().filter(|m| **m == Some(n)).count() == 1
            })
            .map(str::to_string)
        })
        .collect()
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(Arc<str>);

        impl $ty {
            pub fn parse(text: &str) -> Result<$ty, InvalidName> {
                check_name(text)?;
                Ok($ty(Arc::from(text)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", &*self.0)
            }
        }

        impl std::str::FromStr for $ty {
            type Err = InvalidName;
            fn from_str(text: &str) -> Result<$ty, InvalidName> {
                $ty::parse(text)
            }
        }
    };
}

name_type!(
    /// The mesh's name: scopes ZooKeeper paths and metrics, so two meshes can share both.
    MeshName
);
name_type!(
    /// A group: the unit the mesh routes between.
    GroupName
);
name_type!(
    /// A member (one broker process); unique across the whole mesh.
    MemberName
);
name_type!(
    /// A connector; stable because it seeds bridge client ids.
    ConnectorName
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        for ok in ["a", "hub-1", "edge_2.eu", "9lives", &"x".repeat(64)] {
            assert_eq!(
                GroupName::parse(ok).map(|n| n.to_string()),
                Ok(ok.to_string())
            );
        }
    }

    #[test]
    fn refuses_with_a_reason() {
        let cases = [
            ("", "it is empty"),
            ("-hub", "it must start with a letter or digit"),
            (".hub", "it must start with a letter or digit"),
            (
                "hub 1",
                "only letters, digits, '_', '.' and '-' are allowed",
            ),
            (
                "hub/1",
                "only letters, digits, '_', '.' and '-' are allowed",
            ),
            ("hüb", "only letters, digits, '_', '.' and '-' are allowed"),
        ];
        for (text, reason) in cases {
            assert_eq!(
                MemberName::parse(text).map_err(|e| e.reason),
                Err(reason),
                "{text:?}"
            );
        }
        let long = "x".repeat(65);
        assert_eq!(
            MeshName::parse(&long).map_err(|e| e.reason),
            Err("it is longer than 64 characters")
        );
    }

    #[test]
    fn labels_use_valid_unique_names_only() {
        let labels = name_labels(&[Some("hub"), Some("bad name"), None, Some("e"), Some("e")]);
        assert_eq!(
            labels,
            vec![Some("hub".to_string()), None, None, None, None]
        );
    }

    #[test]
    fn names_are_case_sensitive() {
        assert_ne!(GroupName::parse("Hub"), GroupName::parse("hub"));
    }
}
