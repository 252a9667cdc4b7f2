//! The end-to-end suite, one binary: the simulator's CloudHub behaviour against a scripted edge,
//! the real `edgecore` binary against the simulator (with a container runtime in `cri`), and
//! failover behind the loopback VIP.

mod e2e {
    mod chaos;
    mod clock;
    pub(crate) mod common;
    mod cri;
    mod edgecore;
    mod failover;
    mod flood;
    mod simulator;
}
