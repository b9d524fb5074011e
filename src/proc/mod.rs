//! The `/proc` floor that observe, receive and run all stand on: bounded file reads, task
//! stat/status/syscall (with each task's NSpid chain), a target's own files read through its
//! root (`rootfs`), its memory read without a stop (`mem`), socket tables per network
//! namespace, the tree walk with the one definition of a worker, and the index of TCP
//! connections to their holders. Reads only; nothing here pauses or writes to a process, and
//! nothing here judges.

pub mod bounded;
pub mod conn;
pub mod diag;
pub mod file;
pub mod mem;
pub mod polled;
pub mod rootfs;
pub mod sockets;
pub mod task;
pub mod tree;
