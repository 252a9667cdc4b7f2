//! Cloud simulator: CloudHub as `docs/kubeedge-protocol.md` describes it.
#![forbid(unsafe_code)]
