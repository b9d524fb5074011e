//! What is generated from the clap definitions in [`super::args`]: shell completion scripts
//! (`completions bash|zsh|fish`, clap_complete) and the man pages (the hidden `manpage`
//! command, clap_mangen). The pages are committed in `man/` and shipped in the wheel
//! (`share/man/man1`); a test below holds them equal to what these definitions give.

use std::path::Path;

use clap::CommandFactory;

use super::args::{Cli, Shell};
use crate::error::Error;
use crate::report::print_stdout;

/// The name the scripts complete and the pages are titled with.
const BIN: &str = "otel-forkcheck";

/// The completion script for `shell`.
pub fn completion_script(shell: Shell) -> String {
    if shell == Shell::Bash {
        return bash_script();
    }
    generated(shell, BIN)
}

fn generated(shell: Shell, bin: &str) -> String {
    let mut buf = Vec::new();
    clap_complete::generate(shell.generator(), &mut visible_command(), bin, &mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// clap_complete's bash script spells its states two ways when the binary's name has a hyphen,
/// so nothing after a command (`otel-forkcheck run --ju<TAB>`) would complete (clap-rs/clap
/// issue 6421). Generated for the name `otel_forkcheck`, the states agree; only the `complete`
/// lines then name the real command.
fn bash_script() -> String {
    let alias = BIN.replace('-', "_");
    let mut out = String::new();
    for line in generated(Shell::Bash, &alias).lines() {
        match line.strip_suffix(&format!(" {alias}")) {
            Some(head) if line.trim_start().starts_with("complete ") => {
                out.push_str(head);
                out.push(' ');
                out.push_str(BIN);
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The command line without its hidden commands (`manpage`): clap_complete completes hidden
/// commands too, so they are left out of what it is given.
fn visible_command() -> clap::Command {
    let full = Cli::command();
    let mut cmd = clap::Command::new(BIN)
        .version(super::args::VERSION)
        .args_conflicts_with_subcommands(true);
    if let Some(about) = full.get_about() {
        cmd = cmd.about(about.clone());
    }
    for arg in full.get_arguments() {
        cmd = cmd.arg(arg.clone());
    }
    for sub in full.get_subcommands().filter(|s| !s.is_hide_set()) {
        cmd = cmd.subcommand(sub.clone());
    }
    cmd
}

/// `otel-forkcheck completions SHELL`.
pub fn completions(shell: Shell) -> i32 {
    print_stdout(&completion_script(shell));
    0
}

/// Every man page, (file name, roff): `otel-forkcheck.1`, then one per visible command
/// (`otel-forkcheck-run.1`, ...). They carry the plain version, not the build commit, so that
/// the committed pages change with the command line only.
pub fn man_pages() -> Vec<(String, Vec<u8>)> {
    let version = env!("CARGO_PKG_VERSION");
    let mut cmd = Cli::command()
        .version(version)
        .disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    page(&cmd, &format!("{BIN} {version}"), &mut pages);
    pages
}

fn page(cmd: &clap::Command, source: &str, out: &mut Vec<(String, Vec<u8>)>) {
    let man = clap_mangen::Man::new(cmd.clone()).source(source);
    let mut roff = Vec::new();
    man.render(&mut roff)
        .expect("rendering into memory does not fail");
    out.push((man.get_filename(), roff));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        page(sub, source, out);
    }
}

/// `otel-forkcheck manpage [--dir DIR]`: the main page on stdout, or every page into DIR.
pub fn manpage(dir: Option<&Path>) -> i32 {
    let pages = man_pages();
    let Some(dir) = dir else {
        print_stdout(&String::from_utf8_lossy(&pages[0].1));
        return 0;
    };
    for (name, roff) in &pages {
        let path = dir.join(name);
        if let Err(e) = std::fs::write(&path, roff) {
            return Error::new(
                format!("cannot write {}: {e}", path.display()),
                "pass an existing, writable directory to --dir",
            )
            .print();
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMANDS: [&str; 5] = ["check", "receive", "run", "explain", "completions"];

    #[test]
    fn completion_scripts_name_every_command() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = completion_script(shell);
            for c in COMMANDS {
                assert!(script.contains(c), "{shell:?} script lacks {c}");
            }
            // Long flags, spelled without dashes (fish: `-l junit`).
            for flag in [
                "pid",
                "snapshot",
                "expect-workers",
                "junit",
                "color",
                "format",
            ] {
                assert!(script.contains(flag), "{shell:?} script lacks --{flag}");
            }
            assert!(
                script.contains("github"),
                "{shell:?} script lacks --format github"
            );
            assert!(
                !script.contains("manpage"),
                "{shell:?} completes the hidden manpage"
            );
        }
        let bash = completion_script(Shell::Bash);
        assert!(bash.contains(
            "complete -F _otel_forkcheck -o nosort -o bashdefault -o default otel-forkcheck\n"
        ));
        assert!(!bash.contains("default otel_forkcheck"));
        assert!(completion_script(Shell::Zsh).starts_with("#compdef otel-forkcheck"));
        assert!(completion_script(Shell::Fish).contains("complete -c otel-forkcheck"));
    }

    /// What bash offers for the words typed so far (the last one being completed).
    fn bash_completes(script: &std::path::Path, words: &[&str]) -> String {
        let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
        let cword = words.len() - 1;
        let prev = if cword > 0 { words[cword - 1] } else { "" };
        let test = format!(
            "source '{}' || exit 9\n\
             complete -p otel-forkcheck >/dev/null || exit 8\n\
             COMP_WORDS=({})\nCOMP_CWORD={cword}\n\
             _otel_forkcheck otel-forkcheck '{}' '{prev}'\n\
             echo \"${{COMPREPLY[*]}}\"",
            script.display(),
            quoted.join(" "),
            words[cword],
        );
        let out = std::process::Command::new("bash")
            .args(["--norc", "--noprofile", "-c", &test])
            .output()
            .expect("run bash");
        assert!(
            out.status.success(),
            "{test}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    #[test]
    fn the_bash_script_parses_and_completes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("otel-forkcheck.bash");
        std::fs::write(&path, completion_script(Shell::Bash)).unwrap();
        let out = std::process::Command::new("bash")
            .arg("-n")
            .arg(&path)
            .output()
            .expect("run bash -n");
        assert!(
            out.status.success(),
            "bash -n: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(bash_completes(&path, &["otel-forkcheck", "rec"]), "receive");
        assert_eq!(
            bash_completes(&path, &["otel-forkcheck", "run", "--ju"]),
            "--junit"
        );
        assert_eq!(
            bash_completes(&path, &["otel-forkcheck", "receive", "--expect-w"]),
            "--expect-workers"
        );
        assert_eq!(
            bash_completes(&path, &["otel-forkcheck", "check", "--format", "g"]),
            "github"
        );
        assert!(
            bash_completes(&path, &["otel-forkcheck", "completions", ""])
                .ends_with("bash zsh fish")
        );
    }

    #[test]
    fn the_man_pages_cover_every_visible_command() {
        let pages = man_pages();
        let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "otel-forkcheck.1",
                "otel-forkcheck-check.1",
                "otel-forkcheck-receive.1",
                "otel-forkcheck-run.1",
                "otel-forkcheck-explain.1",
                "otel-forkcheck-completions.1",
            ]
        );
        let main = String::from_utf8(pages[0].1.clone()).unwrap();
        assert!(main.contains(&format!(
            "\n.TH otel-forkcheck 1  \"otel-forkcheck {}\"",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(!main.contains("manpage") && !main.contains(env!("OTEL_FORKCHECK_COMMIT")));
        let run = String::from_utf8(pages[3].1.clone()).unwrap();
        assert!(
            run.contains("junit") && run.contains("startup\\-timeout"),
            "{run}"
        );
    }

    /// The pages committed in man/ are what the definitions give today. After changing a flag
    /// or its help: `cargo run -- manpage --dir man`.
    #[test]
    fn the_committed_man_pages_are_up_to_date() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
        let mut committed: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".1"))
            .collect();
        committed.sort();
        let pages = man_pages();
        let mut generated: Vec<String> = pages.iter().map(|(n, _)| n.clone()).collect();
        generated.sort();
        let fix = "regenerate them: cargo run -- manpage --dir man";
        assert_eq!(committed, generated, "man/ has other pages; {fix}");
        for (name, roff) in &pages {
            let on_disk = std::fs::read(dir.join(name)).unwrap();
            assert!(on_disk == *roff, "man/{name} is out of date; {fix}");
        }
    }

    /// The wheel's data folder (pyproject.toml: tool.maturin.data) links every page of man/
    /// into share/man/man1, and nothing else.
    #[test]
    fn the_wheel_data_links_every_man_page() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let man1 = root.join("packaging/wheel-data/data/share/man/man1");
        let mut linked: Vec<String> = std::fs::read_dir(&man1)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        linked.sort();
        let mut names: Vec<String> = man_pages().into_iter().map(|(n, _)| n).collect();
        names.sort();
        assert_eq!(
            linked,
            names,
            "{}: one symlink per page, e.g. ln -s ../../../../../../man/NAME.1 .",
            man1.display()
        );
        for name in &names {
            let link = std::fs::read_link(man1.join(name)).unwrap();
            assert_eq!(
                link,
                Path::new("../../../../../../man").join(name),
                "{name}: a relative symlink into man/"
            );
            assert_eq!(
                std::fs::read(man1.join(name)).unwrap(),
                std::fs::read(root.join("man").join(name)).unwrap()
            );
        }
    }
}
