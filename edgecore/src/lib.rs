//! The edgecore binary's library: metamanager, the SQLite store, wiring, CLI.
#![forbid(unsafe_code)]
