//! (skeleton: filled in by the provider work)
