//! Clients of the daemon. They depend on `protocol`, never on `server`.

pub mod mic;
pub mod stream;
