//! HTTP-level tests of the simulator against `spawn()`.
