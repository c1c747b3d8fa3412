//! The stateless node boot image and node daemon (see issue #8). Not built yet.
