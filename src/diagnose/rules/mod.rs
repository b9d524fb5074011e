//! The catalogue: one file per finding code, each holding its rule and its long documentation.
//! Codes are never reused; a new failure mode gets a new code.

use super::Rule;

mod count;

mod fc101;
mod fc102;
mod fc103;
mod fc104;
mod fc105;
mod fc106;
mod fc107;
mod fc108;
mod fc109;
mod fc201;
mod fc202;
mod fc203;
mod fc204;
mod fc205;
mod fc206;
mod fc207;
mod fc208;
mod fc209;
mod fc210;
mod fc211;
mod fc212;
mod fc213;
mod fc214;
mod fc301;
mod fc302;
mod fc303;
mod fc304;
mod fc305;
mod fc306;
mod fc307;

/// Every rule, in code order.
pub static ALL: &[&Rule] = &[
    &fc101::RULE,
    &fc102::RULE,
    &fc103::RULE,
    &fc104::RULE,
    &fc105::RULE,
    &fc106::RULE,
    &fc107::RULE,
    &fc108::RULE,
    &fc109::RULE,
    &fc201::RULE,
    &fc202::RULE,
    &fc203::RULE,
    &fc204::RULE,
    &fc205::RULE,
    &fc206::RULE,
    &fc207::RULE,
    &fc208::RULE,
    &fc209::RULE,
    &fc210::RULE,
    &fc211::RULE,
    &fc212::RULE,
    &fc213::RULE,
    &fc214::RULE,
    &fc301::RULE,
    &fc302::RULE,
    &fc303::RULE,
    &fc304::RULE,
    &fc305::RULE,
    &fc306::RULE,
    &fc307::RULE,
];
