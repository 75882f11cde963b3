//! The Metal API simulator (skeleton: filled in by the simulator work).
