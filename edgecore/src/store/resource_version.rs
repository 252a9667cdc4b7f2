//! The store's order of object versions.

use std::fmt;

/// A resourceVersion as the store compares them. Kubernetes calls it opaque, but etcd's
/// revisions are decimal numbers and KubeEdge compares them as numbers; so does the store. A
/// version that is not a number has no `ResourceVersion` and is always applied, as KubeEdge
/// does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceVersion(u64);

impl ResourceVersion {
    /// The version `s` names, when it is a decimal number (surrounding spaces allowed).
    pub fn parse(s: &str) -> Option<Self> {
        s.trim().parse().ok().map(Self)
    }

    /// As a number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl From<u64> for ResourceVersion {
    fn from(n: u64) -> Self {
        Self(n)
    }
}

impl fmt::Display for ResourceVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_order_as_numbers_and_the_rest_is_unversioned() {
        assert!(ResourceVersion::parse("9") < ResourceVersion::parse("10"));
        assert_eq!(
            ResourceVersion::parse(" 42 "),
            Some(ResourceVersion::from(42))
        );
        for opaque in ["", "x", "-1", "1.5", "18446744073709551616"] {
            assert_eq!(ResourceVersion::parse(opaque), None, "{opaque:?}");
        }
        assert_eq!(ResourceVersion::from(7).to_string(), "7");
    }
}
