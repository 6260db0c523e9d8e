//! The everyday CLI habits: completions, the manual page, `--version`, `--quiet` and
//! `--verbose`. None needs a daemon.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use crate::common::BIN;

fn p2pnode(args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "p2pnode {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn completions_for_each_shell_name_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = p2pnode(&["completions", shell]);
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(!script.trim().is_empty(), "{shell}: empty script");
        for sub in ["start", "verify", "contacts"] {
            assert!(script.contains(sub), "{shell}: no {sub} in the script");
        }
    }
    // Only real shells are accepted.
    let out = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn the_man_page_is_roff_and_documents_the_commands() {
    let out = p2pnode(&["man"]);
    let page = String::from_utf8(out.stdout).unwrap();
    // clap_mangen opens with two lines defining a quote string; then the title.
    let first_request = page
        .lines()
        .find(|l| !l.starts_with(".ie") && !l.starts_with(".el"))
        .unwrap();
    assert!(
        first_request.starts_with(".TH p2pnode 1"),
        "{first_request}"
    );
    assert!(page.contains(".SH NAME") && page.contains(".SH SYNOPSIS"));
    assert!(page.contains("completions") && page.contains("contacts"));
    assert!(page.contains(env!("CARGO_PKG_VERSION")));
    // Where groff is installed, it must read the page without a complaint.
    let Ok(mut groff) = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        eprintln!("groff not installed: the roff is not parsed here");
        return;
    };
    use std::io::Write;
    groff
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = groff.wait_with_output().unwrap();
    assert!(out.status.success());
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(warnings.trim().is_empty(), "groff: {warnings}");
}

#[test]
fn version_names_the_revision_and_build_date() {
    let out = p2pnode(&["--version"]);
    let version = String::from_utf8(out.stdout).unwrap();
    assert!(version.starts_with("p2pnode "), "{version}");
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    // The revision the binary was built from: git's short hash, or "unknown" outside git.
    let head = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match head {
        Some(rev) => assert!(version.contains(&rev), "{version} lacks {rev}"),
        None => assert!(version.contains("unknown"), "{version}"),
    }
    assert!(version.contains("built 20"), "{version}");
    // Subcommands answer the same (under their own name).
    let sub = String::from_utf8(p2pnode(&["start", "--version"]).stdout).unwrap();
    assert_eq!(
        sub.split_once(' ').map(|s| s.1),
        version.split_once(' ').map(|s| s.1)
    );
}

#[test]
fn quiet_and_verbose_set_the_log_level_and_rust_log_wins() {
    // `id` in a fresh data directory creates the identity and logs that at info.
    let created = "created a new identity";
    let id = |flags: &[&str], rust_log: Option<&str>| {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("--data-dir").arg(dir.path()).arg("id").args(flags);
        cmd.env_remove("RUST_LOG");
        if let Some(v) = rust_log {
            cmd.env("RUST_LOG", v);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        assert!(
            !out.stdout.is_empty(),
            "the result is printed whatever the level"
        );
        String::from_utf8(out.stderr).unwrap()
    };
    assert!(id(&["--verbose"], None).contains(created));
    assert!(id(&["-v"], None).contains(created));
    let quiet = id(&["--quiet"], None);
    assert!(quiet.is_empty(), "--quiet printed: {quiet}");
    assert!(
        !id(&[], None).contains(created),
        "commands only warn by default"
    );
    assert!(
        id(&["--quiet"], Some("info")).contains(created),
        "RUST_LOG wins"
    );
    // Both at once is a mistake, said as such.
    let out = Command::new(BIN)
        .args(["--quiet", "--verbose", "id"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
