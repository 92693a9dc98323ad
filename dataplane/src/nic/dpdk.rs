//! The DPDK backend. Written in a separate change.
