//! The dhcpfix classifier is the binary target (`src/main.rs`), built for
//! `bpfel-unknown-none` by the loader's build script. This library target
//! exists only so that cargo tracks the crate as a build dependency.
#![no_std]
