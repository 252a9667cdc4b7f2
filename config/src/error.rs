//! What can go wrong reading, checking or printing edgecore.yaml.

use std::fmt;
use std::path::{Path, PathBuf};

/// Reading, parsing, checking or printing edgecore.yaml failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file does not exist.
    #[error(
        "config file {} does not exist: create one with `edgecore --defaultconfig > {}` \
         (or `edgecore --minconfig > {}` for the short form) and edit it",
        .path.display(), .path.display(), .path.display()
    )]
    Missing {
        /// The path that was tried.
        path: PathBuf,
    },
    /// The file exists but could not be read.
    #[error("cannot read config file {}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The text is not YAML, or a value has the wrong type or form.
    #[error("{}", parse_message(.path.as_deref(), .key_path, .message))]
    Parse {
        /// The file, when the text came from one.
        path: Option<PathBuf>,
        /// Where in the document, e.g. `modules.edgeHub.heartbeat`; empty for the document
        /// itself (a syntax error).
        key_path: String,
        /// What was wrong and what was expected.
        message: String,
    },
    /// The document parsed but some values are unusable; every problem is listed.
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
    /// The configuration could not be printed as YAML.
    #[error("cannot print the configuration as yaml: {message}")]
    Print {
        /// What the YAML printer said.
        message: String,
    },
}

fn parse_message(path: Option<&Path>, key_path: &str, message: &str) -> String {
    let mut out = String::new();
    if let Some(p) = path {
        out.push_str(&p.display().to_string());
        out.push_str(": ");
    }
    if !key_path.is_empty() {
        out.push_str(key_path);
        out.push_str(": ");
    }
    out.push_str(message);
    out
}

/// One unusable value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// Where, e.g. `modules.edgeHub.heartbeat`.
    pub key_path: String,
    /// The value found, as written in YAML (strings quoted).
    pub value: String,
    /// What the key needs, e.g. `an integer from 1 to 29`.
    pub expected: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: invalid value {}: expected {}",
            self.key_path, self.value, self.expected
        )
    }
}

/// Every unusable value found by [`EdgeCoreConfig::validate`](crate::EdgeCoreConfig::validate);
/// never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(Vec<ValidationError>);

impl ValidationErrors {
    /// `None` when there is nothing to report.
    pub(crate) fn from_vec(errors: Vec<ValidationError>) -> Option<Self> {
        (!errors.is_empty()).then_some(Self(errors))
    }

    /// The problems, in document order.
    pub fn errors(&self) -> &[ValidationError] {
        &self.0
    }

    /// The problem at `key_path`, if there is one.
    pub fn at(&self, key_path: &str) -> Option<&ValidationError> {
        self.0.iter().find(|e| e.key_path == key_path)
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "invalid configuration: {one}"),
            all => {
                write!(f, "invalid configuration, {} problems:", all.len())?;
                for e in all {
                    write!(f, "\n  {e}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_display_names_file_and_key() {
        let e = ConfigError::Parse {
            path: Some(PathBuf::from("/etc/kubeedge/config/edgecore.yaml")),
            key_path: "modules.edgeHub.heartbeat".to_owned(),
            message: "invalid value \"abc\": expected an integer number of seconds".to_owned(),
        };
        assert_eq!(
            e.to_string(),
            "/etc/kubeedge/config/edgecore.yaml: modules.edgeHub.heartbeat: invalid value \"abc\": \
             expected an integer number of seconds"
        );
        let e = ConfigError::Parse {
            path: None,
            key_path: String::new(),
            message: "did not find expected key".to_owned(),
        };
        assert_eq!(e.to_string(), "did not find expected key");
    }

    #[test]
    fn missing_file_says_how_to_create_one() {
        let e = ConfigError::Missing {
            path: PathBuf::from("/tmp/x.yaml"),
        };
        let s = e.to_string();
        assert!(s.contains("/tmp/x.yaml does not exist"), "{s}");
        assert!(s.contains("edgecore --defaultconfig > /tmp/x.yaml"), "{s}");
        assert!(s.contains("--minconfig"), "{s}");
    }

    #[test]
    fn validation_errors_list_every_problem() {
        let one = ValidationError {
            key_path: "a.b".to_owned(),
            value: "0".to_owned(),
            expected: "at least 1".to_owned(),
        };
        let two = ValidationError {
            key_path: "c".to_owned(),
            value: "\"\"".to_owned(),
            expected: "a path".to_owned(),
        };
        assert_eq!(ValidationErrors::from_vec(Vec::new()), None);
        let single = ValidationErrors::from_vec(vec![one.clone()]).unwrap();
        assert_eq!(
            single.to_string(),
            "invalid configuration: a.b: invalid value 0: expected at least 1"
        );
        let both = ValidationErrors::from_vec(vec![one, two]).unwrap();
        assert_eq!(
            both.to_string(),
            "invalid configuration, 2 problems:\n  a.b: invalid value 0: expected at least 1\n  \
             c: invalid value \"\": expected a path"
        );
        assert_eq!(both.at("c").map(|e| e.expected.as_str()), Some("a path"));
    }
}
