//! The node side of the edge: cloud → edgehub → metamanager → **edged-shim** → runtime.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
