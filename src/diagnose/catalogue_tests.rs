//! The catalogue as plain data: codes unique and ordered, every rule documented in the fixed
//! sections, every reference resolving.

use super::*;

const SECTIONS: [&str; 6] = [
    "## What it means",
    "## Why telemetry breaks",
    "## How it is detected",
    "## Fix",
    "## Known false alarms",
    "## References",
];

#[test]
fn every_rule_is_documented_in_the_fixed_sections_and_codes_are_unique() {
    let codes: Vec<&str> = rules::ALL.iter().map(|r| r.code).collect();
    assert!(
        codes.windows(2).all(|w| w[0] < w[1]),
        "codes must be unique and in order: {codes:?}"
    );
    assert_eq!(codes.len(), 30);
    for r in rules::ALL {
        let mut at = 0;
        for s in SECTIONS {
            let i = r.doc[at..]
                .find(s)
                .unwrap_or_else(|| panic!("{}: missing or misplaced {s:?}", r.code));
            at += i + s.len();
        }
        assert!(rule(r.code).is_some() && rule(r.slug).is_some());
        assert!(rule(&r.code.to_lowercase()).is_some());
    }
}

/// What `explain` prints may only point at things the user has: a full https URL, or a file
/// of this repository (`docs/X.md`, optionally `#anchor`) whose anchor is one of its headings.
#[test]
fn every_reference_resolves_to_a_url_or_a_heading_of_a_repository_doc() {
    use std::collections::HashMap;
    use std::path::Path;

    /// GitHub's anchor for a heading: lowercase, spaces to '-', every other character that is
    /// not a letter, a digit, '-' or '_' dropped.
    fn slug(heading: &str) -> String {
        heading
            .trim()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                '-' | '_' => Some(c),
                c if c.is_alphanumeric() => Some(c),
                _ => None,
            })
            .flat_map(char::to_lowercase)
            .collect()
    }

    /// Anchors of a Markdown file's ATX headings outside fenced code blocks; a repeated
    /// heading gets `-1`, `-2`, ... as on GitHub.
    fn anchors(text: &str) -> Vec<String> {
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut out = Vec::new();
        let mut fenced = false;
        for line in text.lines() {
            let t = line.trim_start();
            if t.starts_with("```") || t.starts_with("~~~") {
                fenced = !fenced;
                continue;
            }
            let level = t.chars().take_while(|&c| c == '#').count();
            if fenced || !(1..=6).contains(&level) || !t[level..].starts_with(' ') {
                continue;
            }
            let mut heading = t[level..].trim();
            let closed = heading.trim_end_matches('#');
            if closed.len() < heading.len() && (closed.is_empty() || closed.ends_with(' ')) {
                heading = closed.trim_end();
            }
            let base = slug(heading);
            let n = seen.entry(base.clone()).or_insert(0);
            out.push(if *n == 0 { base } else { format!("{base}-{n}") });
            *n += 1;
        }
        out
    }

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: HashMap<String, Option<Vec<String>>> = HashMap::new();
    let check = |target: &str, files: &mut HashMap<String, Option<Vec<String>>>| {
        if let Some(rest) = target.strip_prefix("https://") {
            let host = rest.split('/').next().unwrap_or("");
            return if host.contains('.') && !target.contains(char::is_whitespace) {
                Ok(())
            } else {
                Err(format!("{target:?} is not a full https URL"))
            };
        }
        if !target.starts_with("docs/") {
            return Err(format!(
                "{target:?} is neither an https URL nor a docs/ path of this repository"
            ));
        }
        let (path, anchor) = match target.split_once('#') {
            Some((p, a)) => (p, Some(a)),
            None => (target, None),
        };
        if path.split('/').any(|part| part == ".." || part.is_empty()) {
            return Err(format!("{target:?}: not a plain path under docs/"));
        }
        let heads = files.entry(path.to_string()).or_insert_with(|| {
            std::fs::read_to_string(root.join(path))
                .ok()
                .map(|text| anchors(&text))
        });
        match (heads, anchor) {
            (None, _) => Err(format!(
                "{target:?}: {path} does not exist in the repository"
            )),
            (Some(_), None) => Ok(()),
            (Some(_), Some(_)) if !path.ends_with(".md") => Err(format!(
                "{target:?}: anchors are only checked in Markdown files"
            )),
            (Some(heads), Some(a)) if heads.iter().any(|h| h == a) => Ok(()),
            (Some(_), Some(a)) => Err(format!(
                "{target:?}: no heading of {path} has the anchor #{a}"
            )),
        }
    };

    let mut errors: Vec<String> = Vec::new();
    for r in rules::ALL {
        for (what, text) in [("doc", r.doc), ("summary", r.summary)] {
            let lower = text.to_lowercase();
            for private in [
                "field-notes",
                "field notes",
                "seed-article",
                "seed article",
                "design.md",
            ] {
                if lower.contains(private) {
                    errors.push(format!(
                        "{}: its {what} mentions {private:?}, which users do not have",
                        r.code
                    ));
                }
            }
        }

        // Every item of the References section names its target first.
        let refs = r
            .doc
            .split_once("## References\n")
            .map_or("", |(_, rest)| rest);
        let refs = refs.split("\n## ").next().unwrap_or("");
        let mut items = 0;
        for line in refs.lines().filter(|l| !l.trim().is_empty()) {
            let Some(item) = line.strip_prefix("- ") else {
                errors.push(format!(
                    "{}: reference line {line:?} is not a '- ' item",
                    r.code
                ));
                continue;
            };
            items += 1;
            let target = item.split_whitespace().next().unwrap_or("");
            if let Err(e) = check(target, &mut files) {
                errors.push(format!("{}: References: {e}", r.code));
            }
        }
        if items == 0 {
            errors.push(format!("{}: the References section lists nothing", r.code));
        }

        // A docs/ path anywhere else in the text must resolve too.
        let body = r.doc.split("## References\n").next().unwrap_or("");
        let bytes = body.as_bytes();
        for (at, _) in body.match_indices("docs/") {
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'/') {
                continue;
            }
            let token: String = body[at..]
                .chars()
                .take_while(|c| !c.is_whitespace() && !matches!(c, ')' | '`' | ',' | ';' | '\''))
                .collect();
            let token = token.trim_end_matches(['.', ':']);
            if let Err(e) = check(token, &mut files) {
                errors.push(format!("{}: {e}", r.code));
            }
        }
    }

    // The links inside the reference document itself.
    let failure_modes = "docs/failure-modes.md";
    let text = std::fs::read_to_string(root.join(failure_modes))
        .unwrap_or_else(|e| panic!("{failure_modes}: {e}"));
    let heads = anchors(&text);
    for (at, _) in text.match_indices("](#") {
        let anchor: String = text[at + 3..].chars().take_while(|&c| c != ')').collect();
        if !heads.contains(&anchor) {
            errors.push(format!(
                "{failure_modes}: link to #{anchor}, which no heading has"
            ));
        }
    }

    assert!(errors.is_empty(), "{}", errors.join("\n"));
}
