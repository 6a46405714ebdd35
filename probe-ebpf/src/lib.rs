//! Empty on purpose: the kernel programs are the `probe` binary (src/main.rs), built for
//! bpfel-unknown-none by probe-user's build.rs. This library target only lets probe-user
//! declare a build-dependency on this crate, so cargo rebuilds when it changes.
#![no_std]
