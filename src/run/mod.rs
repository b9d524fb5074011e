//! `run -- <server command>`: the CI assertion mode. Launches the server aimed at the embedded
//! receiver, drives traffic, watches, stops it gracefully and judges everything together.

pub mod launch;
