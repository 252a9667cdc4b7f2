//! The end-to-end suite, one binary: the simulator's CloudHub behaviour against a scripted edge,
//! the real `edgecore` binary against the simulator, and failover behind the loopback VIP.

mod e2e {
    pub(crate) mod common;
    mod edgecore;
    mod failover;
    mod simulator;
}
