//! Replicated fleet configuration for Nexus Cloud.
//!
//! This crate will own the typed configuration models (route policies, tenants, firmware targets,
//! revocations, fleet settings) mapped onto automerge documents, the signed changes and their
//! authorization, the sync sessions run over QUIC, versions and snapshots, validation before a
//! write and after every merge, and the change storage backing each node's SQLite replica.
//!
//! Nothing lives here yet: membership and trust (the spine) come first.
