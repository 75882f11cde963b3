//! (skeleton: filled in by the Metal client work)
