//! The AF_PACKET backend (Linux packet sockets). Written in a separate change.
