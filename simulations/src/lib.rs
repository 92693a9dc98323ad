//! Deterministic network simulation for Nexus Cloud.
//!
//! This crate will run the real membership, failure detection, broadcast and CRDT code of
//! `nexus-mesh` and `nexus-crdt` for thousands of nodes in one process, over a simulated network
//! in virtual time, with seeded scenarios and reports.
//!
//! Nothing lives here yet: the mesh's in-memory transport seam is the hook it will use.
