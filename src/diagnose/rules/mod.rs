//! The catalogue: one file per finding code, each holding its rule and its long documentation.
//! Codes are never reused; a new failure mode gets a new code.

use super::Rule;

mod fc101;

/// Every rule, in code order.
pub static ALL: &[&Rule] = &[&fc101::RULE];
