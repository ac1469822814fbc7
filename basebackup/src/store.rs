//! TODO(skeleton): see lib.rs
