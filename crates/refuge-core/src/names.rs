//! Validated names: tenants, hosts and sources.
//!
//! Names travel in certificates, keys and file names, so they are limited
//! to a safe alphabet: ASCII letters, digits, `-`, `_` and `.` (not first),
//! 1 to 64 bytes.

use std::fmt;

/// A name that does not fit the alphabet.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid {what} {name:?}: use 1-64 ASCII letters, digits, '-', '_' or '.', not starting with '.' or '-'"
)]
pub struct NameError {
    /// Which kind of name.
    pub what: &'static str,
    /// The rejected text.
    pub name: String,
}

fn check(what: &'static str, s: &str) -> Result<(), NameError> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(NameError {
            what,
            name: s.to_string(),
        })
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(String);

        impl $ty {
            /// Validates and wraps a name.
            pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
                let s = s.into();
                check($what, &s)?;
                Ok($ty(s))
            }
            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A tenant (department); read by the node only from the client certificate.
    TenantId,
    "tenant"
);
name_type!(
    /// A source host's name, from the client certificate.
    HostName,
    "host"
);
name_type!(
    /// A configured source's name (for example `etc` or `vm-disk`).
    SourceName,
    "source name"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_accept_the_alphabet_and_refuse_the_rest() {
        for ok in ["finance", "dept-7", "host.example.org", "a_b", "X"] {
            assert!(TenantId::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "-x",
            "a/b",
            "a b",
            "tenant\0",
            "é",
            &"x".repeat(65),
        ] {
            assert!(TenantId::new(bad).is_err(), "{bad:?}");
        }
        let e = HostName::new("a/b").unwrap_err();
        assert!(e.to_string().contains("invalid host"));
    }
}
