//! The Nexus data plane: each node forwards Nexus traffic on its own NIC and enforces the fleet's
//! route policies there.
//!
//! - [`frame`]: the Nexus frame and its strict parser;
//! - [`policy`]: route policies compiled into a classifier built for speed, swapped atomically;
//! - [`engine`]: the run-to-completion loop (receive a burst, classify, rewrite, transmit);
//! - [`quota`]: the tenant's connection and bandwidth quotas the engine enforces
//!   ([`TenantLimits`], changed at runtime through a [`LimitsHandle`]);
//! - [`nic`]: the NIC backends (DPDK, AF_PACKET, memory) behind one trait.
//!
//! Packets never touch the control plane: the node compiles the replicated configuration into a
//! [`policy::Classifier`] and publishes it through a [`policy::PolicyHandle`]; the engine picks
//! the new classifier up at its next burst.

pub mod engine;
pub mod frame;
pub mod nic;
pub mod policy;
pub mod quota;

pub use quota::{LimitsHandle, TenantLimits};
