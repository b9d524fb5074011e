//! The one error a command ends with when it could not make its check (exit status 2): a
//! one-line cause, what to do about it, and any output worth seeing (a server's last lines).
//! Every command prints it the same way, through [`Error::print`].

use std::io::Write;

/// Exit status when the check could not be made.
pub const EXIT_CANNOT_CHECK: i32 = 2;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Error {
    pub cause: String,
    /// What the user can do about it (may be empty).
    pub hint: String,
    /// Lines to show after the hint, e.g. the last lines a launched server printed.
    pub lines: Vec<String>,
}

impl Error {
    pub fn new(cause: impl Into<String>, hint: impl Into<String>) -> Error {
        Error {
            cause: cause.into(),
            hint: hint.into(),
            lines: Vec::new(),
        }
    }

    /// The text printed on stderr.
    pub fn render(&self) -> String {
        let mut s = format!("otel-forkcheck: error: {}\n", self.cause);
        if !self.hint.is_empty() {
            s.push_str(&format!("  hint: {}\n", self.hint));
        }
        if !self.lines.is_empty() {
            s.push_str(&format!(
                "  last {} line(s) of the server's output:\n",
                self.lines.len()
            ));
            for l in &self.lines {
                s.push_str(&format!("    | {l}\n"));
            }
        }
        s
    }

    /// Prints it on stderr (a closed stderr is ignored) and returns exit status 2.
    pub fn print(&self) -> i32 {
        let _ = std::io::stderr().lock().write_all(self.render().as_bytes());
        EXIT_CANNOT_CHECK
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.cause)
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_cause_then_hint_then_lines() {
        let mut e = Error::new("no process with pid 7", "check the pid");
        assert_eq!(
            e.render(),
            "otel-forkcheck: error: no process with pid 7\n  hint: check the pid\n"
        );
        e.lines = vec!["boom".into()];
        e.hint.clear();
        assert_eq!(
            e.render(),
            "otel-forkcheck: error: no process with pid 7\n  last 1 line(s) of the server's output:\n    | boom\n"
        );
    }
}
