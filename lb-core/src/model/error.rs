//! The one error type for everything wrong with the configuration: a
//! manifest that does not parse, or a Service / EndpointSlice that cannot
//! be programmed. It names the file, the object and the field, so an
//! operator can go straight to the line to fix.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

/// A problem with one object (or one field of it). Never fatal: the rest of
/// the configuration is still loaded and programmed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", Described(self))]
pub struct ConfigError {
    /// The manifest file, if the object came from one.
    pub file: Option<PathBuf>,
    /// Which object, e.g. `Service default/web`; empty for a whole-file problem.
    pub object: String,
    /// Path of the offending field, e.g. `spec.ports[1].protocol`; empty if
    /// the problem is not about one field.
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(
        file: Option<&Path>,
        object: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            file: file.map(Path::to_path_buf),
            object: object.into(),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// `file: object: field: message`, leaving out the parts that are empty.
struct Described<'a>(&'a ConfigError);

impl fmt::Display for Described<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.0;
        if let Some(file) = &e.file {
            write!(f, "{}: ", file.display())?;
        }
        for part in [&e.object, &e.field] {
            if !part.is_empty() {
                write!(f, "{part}: ")?;
            }
        }
        f.write_str(&e.message)
    }
}

/// How errors and logs name an object: `Service default/web`. A manifest
/// object without a namespace lands in `default`, as with `kubectl apply`.
/// A name longer than Kubernetes allows is cut short, so that the error
/// about it stays readable.
pub(crate) fn object_label(kind: &str, namespace: Option<&str>, name: &str) -> String {
    let namespace = namespace.filter(|n| !n.is_empty());
    format!(
        "{kind} {}/{}",
        shortened(namespace.unwrap_or(DEFAULT_NAMESPACE)),
        shortened(name)
    )
}

/// `text`, or its first characters and its length if it is longer than
/// any Kubernetes name.
fn shortened(text: &str) -> Cow<'_, str> {
    const SHOWN: usize = 40;
    if text.len() <= 253 {
        return Cow::Borrowed(text);
    }
    let start: String = text.chars().take(SHOWN).collect();
    Cow::Owned(format!("{start}… ({} characters)", text.len()))
}

pub(crate) const DEFAULT_NAMESPACE: &str = "default";
