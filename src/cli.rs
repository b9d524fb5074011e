//! Command-line interface (spellings fixed by DESIGN.md).
pub fn main() -> i32 {
    0
}
