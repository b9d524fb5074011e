//! Turns a snapshot and its findings into what people and machines read.
